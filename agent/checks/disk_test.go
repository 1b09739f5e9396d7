package checks

import (
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

func TestDiskUsage(t *testing.T) {
	tests := []struct {
		name                          string
		blocks, bfree, bavail, frsize uint64
		wantPct                       float64
		wantFree                      uint64
	}{
		// df: 1K-blocks 1024, used 600, avail 424 -> 58.59%
		{"tmpfs-like", 256, 106, 106, 4096, 150.0 / 256 * 100, 106 * 4096},
		// ext4 with a root reserve: free 100, avail 50, used 900 -> 900/950
		{"root reserve", 1000, 100, 50, 4096, 900.0 / 950 * 100, 50 * 4096},
		{"empty", 1000, 1000, 1000, 1024, 0, 1000 * 1024},
		{"full, reserve left", 1000, 50, 0, 1024, 100, 0},
		{"no blocks (procfs)", 0, 0, 0, 4096, 0, 0},
		{"bfree > blocks", 10, 20, 5, 512, 0, 5 * 512},
		{"overflowing free", 2, 0, math.MaxUint64, 4096, 2 / (2 + float64(math.MaxUint64)) * 100, math.MaxUint64},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pct, free := diskUsage(tt.blocks, tt.bfree, tt.bavail, tt.frsize)
			require.InDelta(t, tt.wantPct, pct, 1e-9)
			require.Equal(t, tt.wantFree, free)
		})
	}
}

func TestDiskFactoryValidation(t *testing.T) {
	tests := []struct {
		name, path string
		max        float64
		wantErr    string
	}{
		{"relative", "var/log", 90, "absolute path"},
		{"empty path", "", 90, "absolute path"},
		{"zero max", "/", 0, "max_used_percent 0 must be above 0 and at most 100"},
		{"negative max", "/", -1, "max_used_percent -1"},
		{"above 100", "/", 100.5, "max_used_percent 100.5"},
		{"NaN", "/", math.NaN(), "max_used_percent NaN"},
		{"100 is fine", "/", 100, ""},
		{"fraction is fine", "/var/../tmp", 0.5, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(diskSpec(tt.path, tt.max))
			if tt.wantErr == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorContains(t, err, tt.wantErr)
		})
	}
}

// mountTmpfs mounts a tmpfs of the given size on a fresh directory and
// unmounts it at cleanup. The tests run as root (CI too), so this must work.
func mountTmpfs(t *testing.T, size string) string {
	t.Helper()
	dir := t.TempDir()
	require.NoError(t, unix.Mount("tmpfs", dir, "tmpfs", 0, "size="+size), "mount a tmpfs on %s (the tests run as root)", dir)
	t.Cleanup(func() {
		if err := unix.Unmount(dir, 0); err != nil {
			_ = unix.Unmount(dir, unix.MNT_DETACH)
		}
	})
	return dir
}

func TestDiskTmpfs(t *testing.T) {
	dir := mountTmpfs(t, "1m")

	// Empty: 0% used, 1 MiB free.
	res := run(t, mustNew(t, diskSpec(dir, 50)), time.Second)
	require.Equal(t, statusOK, res.Status, res.Output)
	require.InDelta(t, 0, res.Metrics["used_percent"], 0.01)
	require.Equal(t, float64(1<<20), res.Metrics["free_bytes"])

	// Fill 600 KiB of the 1 MiB: about 58.6% used.
	require.NoError(t, os.WriteFile(filepath.Join(dir, "fill"), []byte(strings.Repeat("x", 600<<10)), 0o644))

	tests := []struct {
		name   string
		max    float64
		status agentv1.CheckStatus
		output string
	}{
		{"below the limit", 90, statusOK, "% full, limit 90%"},
		{"above the limit", 50, statusCritical, "above the limit of 50%"},
		{"just above", 58.5, statusCritical, "above the limit"},
		{"just below", 58.7, statusOK, "limit 58.7%"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := run(t, mustNew(t, diskSpec(dir, tt.max)), time.Second)
			require.Equal(t, tt.status, res.Status, res.Output)
			require.InDelta(t, 600.0/1024*100, res.Metrics["used_percent"], 0.01)
			require.Equal(t, float64(424<<10), res.Metrics["free_bytes"])
			require.Contains(t, res.Output, tt.output)
			require.Contains(t, res.Output, dir)
		})
	}

	// A path below the mount point is on the same filesystem.
	sub := filepath.Join(dir, "fill")
	res = run(t, mustNew(t, diskSpec(sub, 50)), time.Second)
	require.Equal(t, statusCritical, res.Status, res.Output)
}

func TestDiskMissingPath(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nope")
	res := run(t, mustNew(t, diskSpec(missing, 90)), time.Second)
	require.Equal(t, statusUnknown, res.Status, res.Output)
	require.Contains(t, res.Output, "cannot stat the filesystem at "+missing)
}

// TestDiskHungStatfs: a statfs that never returns makes the run UNKNOWN at
// its timeout, and later runs say so instead of piling up goroutines.
func TestDiskHungStatfs(t *testing.T) {
	c := mustNew(t, diskSpec("/", 90)).(*diskCheck)
	release := make(chan struct{})
	var calls atomic.Int32
	c.statfs = func(path string, st *unix.Statfs_t) error {
		calls.Add(1)
		<-release
		return errors.New("released")
	}
	res := run(t, c, 50*time.Millisecond)
	require.Equal(t, statusUnknown, res.Status)
	require.Contains(t, res.Output, "did not return within")

	res = run(t, c, 50*time.Millisecond)
	require.Equal(t, statusUnknown, res.Status)
	require.Contains(t, res.Output, "still not returned")

	close(release)
	require.Eventually(t, func() bool {
		res := run(t, c, 50*time.Millisecond)
		return strings.Contains(res.Output, "released")
	}, 2*time.Second, 10*time.Millisecond)
	require.Equal(t, int32(2), calls.Load()) // the hung one, then the one after it returned
}
