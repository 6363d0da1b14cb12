"""What several unveil folders need once: checkpoint and backbone-file I/O (:mod:`.checkpoints`), the Lightning
checkpoint writers (:mod:`.checkpoint_writers`), distributed information and gathers (:mod:`.distributed`),
seeds (:mod:`.seeding`), config capture (:mod:`.config`), and the learning-rate rule and warmup-cosine
schedule (:mod:`.schedule`). Imports no other unveil folder, except the wrapper rule of
``unveil.models.convert`` and, by name only, the model classes a checkpoint records."""
