//go:build race

package filter_test

func init() { raceEnabled = true }
