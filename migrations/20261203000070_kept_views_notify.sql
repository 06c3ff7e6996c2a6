-- Tells the console's kept views (the rules' flag counts and the suggested
-- cases, src/kept.rs) that what they read has changed, so that they need
-- neither poll nor count whole tables. NOTIFY is delivered at commit, so a
-- listener never reads before the change is visible, and once per
-- transaction however many statements or rows notified in it.
CREATE FUNCTION notify_kept_views() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('kept_views', '');
  RETURN NULL;
END
$$;

-- The triggers sit on what the views read, not on the evidence they derive
-- from: every flag step rewrites its flag's row in the same statement, and
-- every flag added to or removed from a case changes case_flags, while the
-- case events that change no membership (notes, assignments, status) would
-- only set off a regrouping that finds nothing new.

-- The counts read each flag's rule and status; the suggestions its rule,
-- severity, status and record. Other columns (a cleared flag following its
-- record's clinic) change neither.
CREATE TRIGGER flags_kept_views
  AFTER INSERT OR UPDATE OF status, rule_id, severity, record_id, raised_at OR DELETE ON flags
  FOR EACH STATEMENT EXECUTE FUNCTION notify_kept_views();

-- A flag in a case is no longer suggested.
CREATE TRIGGER case_flags_kept_views
  AFTER INSERT OR UPDATE OR DELETE ON case_flags
  FOR EACH STATEMENT EXECUTE FUNCTION notify_kept_views();

-- The suggestions group flags by their records' people, clinic, country,
-- time and foreign living donor. An amendment need not step every flag of
-- its record (only those whose rule ran again), so the record itself
-- notifies, but only when a grouped column took another value: one row at
-- a time, as amendments are written, and never for the many updates that
-- leave those columns alone (MACs, federation elements).
CREATE TRIGGER records_kept_views
  AFTER UPDATE OF donor_fp, recipient_fp, clinic_id, procedure_country, transplanted_at,
                  donor_type, donor_non_resident, donor_nationality ON records
  FOR EACH ROW
  WHEN (OLD.donor_fp IS DISTINCT FROM NEW.donor_fp
        OR OLD.recipient_fp IS DISTINCT FROM NEW.recipient_fp
        OR OLD.clinic_id IS DISTINCT FROM NEW.clinic_id
        OR OLD.procedure_country IS DISTINCT FROM NEW.procedure_country
        OR OLD.transplanted_at IS DISTINCT FROM NEW.transplanted_at
        OR OLD.donor_type IS DISTINCT FROM NEW.donor_type
        OR OLD.donor_non_resident IS DISTINCT FROM NEW.donor_non_resident
        OR OLD.donor_nationality IS DISTINCT FROM NEW.donor_nationality)
  EXECUTE FUNCTION notify_kept_views();
