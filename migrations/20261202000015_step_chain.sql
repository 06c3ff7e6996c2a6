-- Each triage or amendment step names the step it follows by its place in
-- the ledger's sequence. A sealed block then holds, for every step, the one
-- before it: once sealed, a step deleted and its flag's row rewound leaves
-- a sealed successor of the step that now looks newest, which the service
-- checks before it adds a step and `verify` names. Steps written before
-- this migration keep no link; the ledger's blocks still seal them.
ALTER TABLE flag_events ADD COLUMN ledger_prev BIGINT;
