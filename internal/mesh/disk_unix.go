//go:build unix

package mesh

import "syscall"

// DiskUsedRatio is the used fraction of the filesystem holding dir, as df
// computes it: used blocks over used plus those available to unprivileged
// users.
func DiskUsedRatio(dir string) (float64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, err
	}
	used := uint64(st.Blocks) - uint64(st.Bfree)
	total := used + uint64(st.Bavail)
	if total == 0 {
		return 0, nil
	}
	return float64(used) / float64(total), nil
}
