package checks

import (
	"context"
	"fmt"
	"math"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

// The disk check: how full is the filesystem holding a path.
//
// used_percent is computed as df does, used/(used+available)*100, where
// "available" is what unprivileged users may still write (the root reserve
// is not counted as free); free_bytes is that available space. The check is
// CRITICAL when used_percent is above max_used_percent.
//
// statfs on a hung network filesystem can block in the kernel for ever, so
// it runs in its own goroutine: a run that times out returns UNKNOWN, and
// until that statfs returns, later runs report it instead of piling up more
// blocked goroutines.

func init() { Register("disk", newDiskCheck) }

type diskCheck struct {
	path   string
	max    float64
	statfs func(path string, st *unix.Statfs_t) error
	// pending is closed when a statfs that outlived its run returns.
	pending chan struct{}
}

func newDiskCheck(spec *agentv1.CheckSpec) (Checker, error) {
	d := spec.GetDisk()
	path, max := d.GetPath(), d.GetMaxUsedPercent()
	if !filepath.IsAbs(path) || strings.ContainsRune(path, 0) {
		return nil, fmt.Errorf("disk check: path %s must be an absolute path", quote(path))
	}
	if !(max > 0 && max <= 100) { // also rejects NaN
		return nil, fmt.Errorf("disk check: max_used_percent %v must be above 0 and at most 100", max)
	}
	return &diskCheck{path: filepath.Clean(path), max: max, statfs: unix.Statfs}, nil
}

func (c *diskCheck) Check(ctx context.Context) Result {
	if c.pending != nil {
		select {
		case <-c.pending:
			c.pending = nil
		default:
			return result(statusUnknown, nil, "statfs %s from an earlier run has still not returned: the filesystem may be hung", c.path)
		}
	}
	type answer struct {
		st  unix.Statfs_t
		err error
	}
	start := time.Now()
	ch := make(chan answer, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		var a answer
		a.err = c.statfs(c.path, &a.st)
		ch <- a
	}()
	var a answer
	select {
	case a = <-ch:
	case <-ctx.Done():
		c.pending = done
		return result(statusUnknown, nil, "statfs %s did not return within %v: the filesystem may be hung", c.path, timeoutOf(ctx, start))
	}
	if a.err != nil {
		return result(statusUnknown, nil, "cannot stat the filesystem at %s: %v", c.path, a.err)
	}
	usedPct, free := diskUsage(a.st.Blocks, a.st.Bfree, a.st.Bavail, fragmentSize(&a.st))
	metrics := map[string]float64{"used_percent": usedPct, "free_bytes": float64(free)}
	if usedPct > c.max {
		return result(statusCritical, metrics, "%s is %.1f%% full, above the limit of %g%% (%s free)", c.path, usedPct, c.max, humanBytes(free))
	}
	return result(statusOK, metrics, "%s is %.1f%% full, limit %g%% (%s free)", c.path, usedPct, c.max, humanBytes(free))
}

// fragmentSize is the unit of the block counts, as statvfs(3) reports it.
func fragmentSize(st *unix.Statfs_t) uint64 {
	if st.Frsize > 0 {
		return uint64(st.Frsize)
	}
	if st.Bsize > 0 {
		return uint64(st.Bsize)
	}
	return 0
}

// diskUsage computes df's Use% (without df's rounding up) and the bytes
// available to unprivileged users, from statfs block counts. A filesystem
// with no blocks at all (procfs and the like) is 0% used.
func diskUsage(blocks, bfree, bavail, frsize uint64) (usedPercent float64, freeBytes uint64) {
	used := uint64(0)
	if blocks > bfree {
		used = blocks - bfree
	}
	freeBytes = bavail * frsize
	if bavail > math.MaxUint64/max(frsize, 1) {
		freeBytes = math.MaxUint64
	}
	if used+bavail == 0 {
		return 0, freeBytes
	}
	return float64(used) / (float64(used) + float64(bavail)) * 100, freeBytes
}
