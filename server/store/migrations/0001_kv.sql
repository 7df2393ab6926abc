-- Every space of the store in one table, keyed (space, key). `key` is bytea, which PostgreSQL
-- orders byte by byte (memcmp, then the shorter first): the order of the embedded engine's keys.
-- `space` is Space::name(); COLLATE "C" keeps its comparisons byte-wise and cheap.
CREATE TABLE upkeep_kv (
    space text COLLATE "C" NOT NULL,
    key bytea NOT NULL,
    value bytea NOT NULL,
    PRIMARY KEY (space, key)
);
