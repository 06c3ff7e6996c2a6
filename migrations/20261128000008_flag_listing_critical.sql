-- Auditor listings of CRITICAL flags (ListFlags min_severity = CRITICAL,
-- alone or with a status), newest first. They are a few percent of all
-- flags: walking the primary key down skips thousands of rows per page, and
-- flags_by_severity cannot give id order over a range of severities.
CREATE INDEX flags_critical ON flags (id DESC) WHERE severity >= 4;
