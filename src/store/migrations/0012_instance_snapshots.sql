-- 0012: what only an instance's owning coordinator knows (resident memory and CPU of the
-- child's process group, the last lines of its stderr with secret values masked, the tools it
-- offers and hides), written by the owner every few seconds as one JSON document, so a console
-- on the same database, in any process, shows them. NULL until the owner first writes it.
ALTER TABLE instances ADD COLUMN snapshot TEXT;
