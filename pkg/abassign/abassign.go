// Package abassign assigns units (accounts, strategies, ...) to the arms of
// an A/B test. ExperimentService (AssignUnit) and InferenceService (routing)
// both use it, so they always agree.
//
// A unit's bucket is a fixed hash of the test's salt and the unit id,
// reduced to [0, Buckets) with integer arithmetic only: FNV-1a 64 over the
// salt, a 0x00 separator and the unit id, then the SplitMix64 finaliser so
// that every output bit depends on every input bit. The unit is treated iff
// its bucket is below the treatment share in basis points, so widening the
// share only moves control units to treatment, never the reverse. Nothing
// depends on the process, the platform or the time: the same salt and unit
// give the same bucket forever. Changing this function reshuffles every
// running test; don't.
package abassign

// Buckets is the number of buckets, one per basis point.
const Buckets = 10000

// Arm is one side of a test.
type Arm uint8

const (
	// Control is the control arm.
	Control Arm = iota
	// Treatment is the treatment arm.
	Treatment
)

// String returns "control" or "treatment".
func (a Arm) String() string {
	if a == Treatment {
		return "treatment"
	}
	return "control"
}

const (
	fnvOffset = 14695981039346656037
	fnvPrime  = 1099511628211
)

// Salted is the hash state after a salt and the separator: Assign on it
// hashes only the unit id, so a caller holding one per test skips
// re-hashing the salt on every request.
type Salted uint64

// Salt returns the hash state after salt.
func Salt(salt string) Salted {
	h := uint64(fnvOffset)
	for i := 0; i < len(salt); i++ {
		h ^= uint64(salt[i])
		h *= fnvPrime
	}
	// A 0x00 separator keeps ("ab", "c") and ("a", "bc") apart.
	h *= fnvPrime
	return Salted(h)
}

// Hash returns the 64-bit hash of the salt and unit.
func (s Salted) Hash(unit string) uint64 {
	h := uint64(s)
	for i := 0; i < len(unit); i++ {
		h ^= uint64(unit[i])
		h *= fnvPrime
	}
	// SplitMix64 finaliser.
	h ^= h >> 30
	h *= 0xbf58476d1ce4e5b9
	h ^= h >> 27
	h *= 0x94d049bb133111eb
	h ^= h >> 31
	return h
}

// Bucket returns the unit's bucket in [0, Buckets).
func (s Salted) Bucket(unit string) int32 {
	return int32(s.Hash(unit) % Buckets)
}

// Assign returns the unit's arm and bucket under a treatment share of
// treatmentBPS basis points: treatment iff bucket < treatmentBPS.
func (s Salted) Assign(unit string, treatmentBPS int32) (Arm, int32) {
	b := s.Bucket(unit)
	if b < treatmentBPS {
		return Treatment, b
	}
	return Control, b
}

// Hash returns the 64-bit hash of salt and unit.
func Hash(salt, unit string) uint64 { return Salt(salt).Hash(unit) }

// Bucket returns the unit's bucket in [0, Buckets).
func Bucket(salt, unit string) int32 { return Salt(salt).Bucket(unit) }

// Assign returns the unit's arm and bucket under a treatment share of
// treatmentBPS basis points: treatment iff bucket < treatmentBPS.
func Assign(salt, unit string, treatmentBPS int32) (Arm, int32) {
	return Salt(salt).Assign(unit, treatmentBPS)
}
