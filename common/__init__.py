"""What several unveil folders need once: checkpoint and backbone-file I/O (:mod:`.checkpoints`) and
distributed information and gathers (:mod:`.distributed`). Imports no other unveil folder, except the
wrapper rule of ``unveil.models.convert`` and, by name only, the model classes a checkpoint records."""
