package experiment

// RegistryStore persists the model registry: registered models, versions
// and aliases.
type RegistryStore interface{}
