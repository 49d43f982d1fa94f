-- 0009: fewer index pages per task step. Every index a step changes costs at least one 4 KB
-- page of WAL in that step's transaction, so indexes that only some queries need are kept
-- small. tasks_holder (leased_by) is dropped: a lease sets last_agent_id to the holder too,
-- so tasks_agent finds the tasks an agent holds (last_agent_id = ? AND leased_by = ?), and
-- claim and completion each touch one index fewer. tasks_agent leaves out the tasks no agent
-- has held yet, so a submit does not write an entry for them.
DROP INDEX tasks_holder;
DROP INDEX tasks_agent;
CREATE INDEX tasks_agent ON tasks (last_agent_id) WHERE last_agent_id IS NOT NULL;
