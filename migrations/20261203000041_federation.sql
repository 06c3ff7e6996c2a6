-- Federation between registries (private set intersection).
--
-- Peers an administrator configured: a peer is known by its name, reached
-- at its address, and recognised by its CA (a client certificate that
-- chains to it is that peer). Removing a peer updates its row in place, so
-- the row covers its place in the ledger's sequence and the one before.
CREATE TABLE federation_peers (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name TEXT NOT NULL CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$'),
    address TEXT NOT NULL,
    ca_pem TEXT NOT NULL,
    added_at TIMESTAMPTZ NOT NULL,
    added_by TEXT NOT NULL,
    removed_at TIMESTAMPTZ,
    ledger_seq BIGINT NOT NULL,
    ledger_prev BIGINT,
    ledger_mac BYTEA
);
-- One peer of a name at a time; a removed one may be added again.
CREATE UNIQUE INDEX federation_peers_current ON federation_peers (name) WHERE removed_at IS NULL;

-- Every exchange, on both sides: who (the peer, or the certificate of a
-- client that is no peer), when, which call, how many elements came in and
-- went out, and how it ended. Append-only.
CREATE TABLE federation_exchanges (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at TIMESTAMPTZ NOT NULL,
    peer TEXT NOT NULL,
    side TEXT NOT NULL CHECK (side IN ('SERVED', 'INITIATED')),
    call TEXT NOT NULL,
    exchange_id TEXT NOT NULL,
    elements_in BIGINT NOT NULL CHECK (elements_in >= 0),
    elements_out BIGINT NOT NULL CHECK (elements_out >= 0),
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL,
    ledger_seq BIGINT NOT NULL DEFAULT nextval('ledger_seq'),
    ledger_mac BYTEA
);
-- The daily ceiling sums a peer's elements raised today.
CREATE INDEX federation_exchanges_ceiling ON federation_exchanges (peer, at)
    WHERE side = 'SERVED' AND outcome = 'OK';

-- What a sync found: a local record whose living donor a peer holds too,
-- with the living donations there. The rule raises its flag from these
-- rows, and a rescan raises it again from them. Append-only; a later sync
-- that finds another count adds a row.
CREATE TABLE federation_matches (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    record_id BIGINT NOT NULL REFERENCES records (id),
    peer TEXT NOT NULL,
    peer_donations INTEGER NOT NULL CHECK (peer_donations > 0),
    found_at TIMESTAMPTZ NOT NULL,
    ledger_seq BIGINT NOT NULL DEFAULT nextval('ledger_seq'),
    ledger_mac BYTEA,
    UNIQUE (record_id, peer, peer_donations)
);

-- Sync reads the living donors by element, in element order.
CREATE INDEX records_living_donor_by_element ON records (donor_element)
    WHERE donor_type = 'LIVING' AND donor_element IS NOT NULL;
