-- A flag carries its record's external id (the hospital's own, which never
-- changes), so that a page of ListFlags reads flags alone. Joining records
-- for it read one cold heap page per flag of a page at 10^7 records, and
-- kept the listing's p99 above 5 ms.
ALTER TABLE flags ADD COLUMN external_record_id TEXT;
UPDATE flags f SET external_record_id = r.external_record_id FROM records r WHERE r.id = f.record_id;
ALTER TABLE flags ALTER COLUMN external_record_id SET NOT NULL;
