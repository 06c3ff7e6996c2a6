-- Each record keeps its donor's and its recipient's federation element,
-- k·H(id) on ristretto255 (a compressed point, 32 bytes), beside their
-- fingerprints: the only form in which a person is compared with a peer
-- registry. Records stored before have none until an import of their
-- source file fills them in; a registry without a federation key stores
-- none. The row's MAC covers both (a second format of the record's MAC
-- input), so rows written before stay verifiable as they are.
ALTER TABLE records
    ADD COLUMN donor_element BYTEA,
    ADD COLUMN recipient_element BYTEA,
    ADD CONSTRAINT records_elements_together
        CHECK ((donor_element IS NULL) = (recipient_element IS NULL)),
    ADD CONSTRAINT records_elements_are_points
        CHECK (octet_length(donor_element) = 32 AND octet_length(recipient_element) = 32);

-- A sync reads the living donors' elements of a time range.
CREATE INDEX records_living_donor_elements ON records (transplanted_at)
    INCLUDE (donor_element)
    WHERE donor_type = 'LIVING' AND donor_element IS NOT NULL;
