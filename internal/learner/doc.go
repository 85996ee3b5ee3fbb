// Package learner is the online learner of the policy network: it joins
// decisions with the realised forward return of their symbol into
// outcomes, keeps a bounded replay buffer of them, fine-tunes the served
// version under an Elastic Weight Consolidation penalty (pkg/policy),
// checks the candidate for degradation against the previous version and
// either publishes it (an ExperimentService run, a model version, the alias
// moved, which InferenceService follows through WatchModel) or rejects it
// and keeps the previous version.
//
// It also holds the forgetting benchmark (Forgetting): train on one regime
// of the bundled data, continue on another with and without EWC.
package learner
