-- The items table, in SQL that SQLite and PostgreSQL both take, except the key's type:
-- PostgreSQL spells it `id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY`.
-- AUTOINCREMENT: an id is never given out again after a delete, so a client (or a cache)
-- holding `/items/7` never sees another item under that address.
CREATE TABLE items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    description TEXT,
    price DOUBLE PRECISION
);
-- The listing orders by `id`, the primary key, so it reads the key's own index in order
-- and needs no index of its own.
