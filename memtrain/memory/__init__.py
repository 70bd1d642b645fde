"""Memory primitives below the network: the plan, optimizer slots, the arena, the batch
solver, budgets and measurement. Services that need a trainer live in memtrain/profiler/."""
