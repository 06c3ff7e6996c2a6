-- Investigation: auditors search records by party and time, newest
-- transplant first, and walk the network of records that share a donor, a
-- recipient, a clinic or a hospital.
--
-- Recipients are looked up by equality only, like donors
-- (20261128000013): a hash index keeps 4 bytes per record.
CREATE INDEX records_recipient ON records USING hash (recipient_fp);
-- A clinic's or a hospital's records in a time range, newest first, read
-- backwards along the index and stopped at the page's end; the id breaks
-- ties and is the keyset's second column.
CREATE INDEX records_by_clinic_time ON records (clinic_id, transplanted_at, id);
CREATE INDEX records_by_hospital_time ON records (hospital_id, transplanted_at, id);
-- Searches by the other filters (country, organ, nationality, residence)
-- read every record newest first and stop at the page's end.
CREATE INDEX records_by_time ON records (transplanted_at, id);

-- The access log by who read, newest first (by what: access_log_by_resource).
CREATE INDEX access_log_by_principal ON access_log (principal, id);
CREATE INDEX access_log_by_key ON access_log (key_id, id);
