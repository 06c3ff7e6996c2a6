-- The live flag feed in commit order. Until now the feed ordered flags by
-- their transaction's id and showed one only once every older transaction
-- of the whole cluster had ended, so one long write transaction anywhere
-- (another database, a psql session left open) held every watcher back.
--
-- Now a flag takes its feed position when its transaction commits: a
-- deferred trigger, run at commit, takes a transaction-scoped advisory lock
-- and draws the next position. The lock is held to the end of the commit,
-- so positions become visible in order: a reader that sees position n sees
-- every position below it that will ever exist. Only transactions that
-- raise flags take the lock, and only for their commit.
CREATE SEQUENCE flag_feed_position;

-- No foreign key to flags: a flag's feed entry is a derived index, and
-- whoever deletes a flag (an attack verify must name) must not be stopped
-- by it. The feed reads flags through a join; a vanished flag just drops out.
CREATE TABLE flag_feed (
    position BIGINT PRIMARY KEY,
    flag_id  BIGINT NOT NULL UNIQUE
);

-- The flags raised so far, in the order the old feed gave them.
INSERT INTO flag_feed (position, flag_id)
SELECT row_number() OVER (ORDER BY feed_tx, id), id FROM flags;
SELECT setval('flag_feed_position', (SELECT count(*) FROM flag_feed) + 1, false);

CREATE FUNCTION flag_feed_enter() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  -- Two int4 keys: a key space apart from the bigint keys ingest locks.
  PERFORM pg_advisory_xact_lock(20261203, 31);
  INSERT INTO flag_feed (position, flag_id)
  VALUES (nextval('flag_feed_position'), NEW.id)
  ON CONFLICT (flag_id) DO NOTHING;
  RETURN NULL;
END
$$;

CREATE CONSTRAINT TRIGGER flags_feed_enter AFTER INSERT ON flags
  DEFERRABLE INITIALLY DEFERRED
  FOR EACH ROW EXECUTE FUNCTION flag_feed_enter();
