package experiment

// CheckpointStore persists checkpoints and applies retention policies.
type CheckpointStore interface{}
