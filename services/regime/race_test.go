//go:build race

package regime

func init() { raceEnabled = true }
