-- No query reads records by recipient: no rule of the catalogue looks at a
-- recipient's earlier transplants, and no auditor filter names one. The
-- index only cost every insert a write at a random place in a large tree (at
-- 10^7 records, a page written whole to the WAL after each checkpoint). A
-- rule that reads a recipient's history brings its index back with it.
DROP INDEX records_recipient;
