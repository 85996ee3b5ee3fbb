//go:build !unix

package mesh

import "errors"

// DiskUsedRatio is not implemented here; quantmesh.store.disk.used_ratio is
// then absent.
func DiskUsedRatio(string) (float64, error) {
	return 0, errors.New("disk usage: not supported on this platform")
}
