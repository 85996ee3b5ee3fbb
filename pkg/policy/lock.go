package policy

// LockGorgonia takes the process-wide gorgonia lock (gorgoniaMu) and returns
// its unlock. Every package that builds, runs or closes a gorgonia graph must
// hold it for the whole operation: graphs are not independent in gorgonia
// v0.9.18 and racing builds corrupt each other.
func LockGorgonia() (unlock func()) {
	gorgoniaMu.Lock()
	return gorgoniaMu.Unlock
}
