-- The live flag feed (AuditService.WatchFlags). Flags are read in the order
-- their transactions began (xid8), then by id, and only once every
-- transaction older than theirs has ended: a later commit can then never
-- slip in behind a reader's cursor, on any replica.
ALTER TABLE flags ADD COLUMN feed_tx xid8 NOT NULL DEFAULT pg_current_xact_id();
CREATE INDEX flags_feed ON flags (feed_tx, id);

-- Wakes watchers on every replica when a transaction that raised flags
-- commits (NOTIFY is delivered at commit, once per distinct payload).
CREATE FUNCTION notify_flag_raised() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('flag_raised', '');
  RETURN NULL;
END
$$;

CREATE TRIGGER flags_notify AFTER INSERT ON flags
  FOR EACH STATEMENT EXECUTE FUNCTION notify_flag_raised();
