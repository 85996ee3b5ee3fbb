package experiment

// RunStore persists runs, their params and tags, and metric points.
type RunStore interface{}
