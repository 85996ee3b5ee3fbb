package mesh_test

import (
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/quantmesh/quantmesh/internal/mesh"
)

func TestDiskUsedRatio(t *testing.T) {
	dir := t.TempDir()
	r, err := mesh.DiskUsedRatio(dir)
	if err != nil {
		t.Fatal(err)
	}
	if r < 0 || r > 1 {
		t.Fatalf("DiskUsedRatio = %v, want within [0, 1]", r)
	}
	// df's Use% is the same ratio, rounded up to a whole percent.
	if out, err := exec.Command("df", "-P", dir).Output(); err == nil {
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		f := strings.Fields(lines[len(lines)-1])
		if len(f) >= 5 {
			if pct, err := strconv.Atoi(strings.TrimSuffix(f[4], "%")); err == nil {
				if got := r * 100; got > float64(pct)+1 || got < float64(pct)-2 {
					t.Errorf("DiskUsedRatio = %.4f, df says %d%%", r, pct)
				}
			}
		}
	}
	if _, err := mesh.DiskUsedRatio(dir + "/missing"); err == nil {
		t.Error("DiskUsedRatio of a missing directory: want an error")
	}
}
