package disk

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// hook sets the walk's hooks for one test.
func hook(t *testing.T, enter, remove func(rel string)) {
	t.Helper()
	if enter != nil {
		beforeEnter = enter
	}
	if remove != nil {
		beforeRemove = remove
	}
	t.Cleanup(func() { beforeEnter, beforeRemove = func(string) {}, func(string) {} })
}

// swapForSymlink renames p away (to p+".moved") and puts a symlink to
// target in its place.
func swapForSymlink(t *testing.T, p, target string) {
	t.Helper()
	require.NoError(t, os.Rename(p, p+".moved"))
	require.NoError(t, os.Symlink(target, p))
}

// Directory components swapped for symlinks mid-walk never make the
// cleanup reach outside its directory.
func TestSymlinkPlantedMidWalk(t *testing.T) {
	old := 48 * time.Hour
	setup := func(t *testing.T) (dir, outside string) {
		outside = t.TempDir()
		tree(t, outside, map[string]time.Duration{"old.log": old, "deeper/old.log": old})
		dir = t.TempDir()
		tree(t, dir, map[string]time.Duration{"sub/old.log": old, "sub/deeper/old.log": old, "top.log": old})
		return dir, outside
	}
	intact := func(t *testing.T, outside string) {
		t.Helper()
		require.True(t, exists(filepath.Join(outside, "old.log")), "a file outside the directory was deleted")
		require.True(t, exists(filepath.Join(outside, "deeper/old.log")), "a file outside the directory was deleted")
	}

	t.Run("before a subdirectory is entered", func(t *testing.T) {
		dir, outside := setup(t)
		planted := 0
		hook(t, func(rel string) {
			if rel == "sub" {
				planted++
				swapForSymlink(t, filepath.Join(dir, "sub"), outside)
			}
		}, nil)
		res := cleanup(t, "t1", map[string]any{"path": dir, "pattern": "*.log", "recursive": true})
		require.Equal(t, 1, planted)
		intact(t, outside)
		require.False(t, res.Success, "the swap is a problem worth reporting")
		require.Contains(t, res.Output, `open "sub": changed into something other than a directory while it was being opened (a symlink?); not entering it`)
		require.False(t, exists(filepath.Join(dir, "top.log")), "the rest is cleaned")
	})

	t.Run("the directory being walked", func(t *testing.T) {
		dir, outside := setup(t)
		hook(t, nil, func(rel string) {
			if rel == "sub/deeper/old.log" {
				// Both the directory being walked and its parent.
				swapForSymlink(t, filepath.Join(dir, "sub/deeper"), filepath.Join(outside, "deeper"))
				swapForSymlink(t, filepath.Join(dir, "sub"), outside)
			}
		})
		res := cleanup(t, "t1", map[string]any{"path": dir, "pattern": "*.log", "recursive": true})
		require.True(t, res.Success, res.Output)
		intact(t, outside)
		// What was deleted is the file that was looked at, where it moved.
		require.False(t, exists(filepath.Join(dir, "sub.moved/deeper.moved/old.log")))
		require.Equal(t, 3.0, res.Metrics["files_deleted"], res.Output)
	})

	t.Run("a subdirectory of the one being walked", func(t *testing.T) {
		dir, outside := setup(t)
		hook(t, func(rel string) {
			if rel == "sub/deeper" {
				swapForSymlink(t, filepath.Join(dir, "sub"), outside) // the parent, already open
			}
		}, nil)
		res := cleanup(t, "t1", map[string]any{"path": dir, "pattern": "*.log", "recursive": true})
		require.True(t, res.Success, res.Output)
		intact(t, outside)
		require.False(t, exists(filepath.Join(dir, "sub.moved/deeper/old.log")))
	})

	t.Run("the file itself", func(t *testing.T) {
		dir, outside := setup(t)
		hook(t, nil, func(rel string) {
			if rel == "top.log" {
				require.NoError(t, os.Remove(filepath.Join(dir, "top.log")))
				require.NoError(t, os.Symlink(filepath.Join(outside, "old.log"), filepath.Join(dir, "top.log")))
			}
		})
		res := cleanup(t, "t1", map[string]any{"path": dir, "pattern": "top.log"})
		require.True(t, res.Success, res.Output)
		intact(t, outside)
		require.False(t, exists(filepath.Join(dir, "top.log")), "the link itself goes")
	})

	t.Run("the quarantine directory", func(t *testing.T) {
		dir, outside := setup(t)
		removes := 0
		hook(t, nil, func(rel string) {
			// Once the first file is in the quarantine (whichever the walk
			// met first).
			if removes++; removes == 2 {
				swapForSymlink(t, filepath.Join(dir, QuarantineDir), outside)
			}
		})
		res := cleanup(t, "t1", map[string]any{"path": dir, "pattern": "*.log", "recursive": true, "mode": "quarantine"})
		require.True(t, res.Success, res.Output)
		intact(t, outside)
		entries, err := os.ReadDir(outside)
		require.NoError(t, err)
		require.Len(t, entries, 2, "nothing was moved outside")
		require.Equal(t, 3, removes)
		require.Equal(t, 3.0, res.Metrics["files_quarantined"], res.Output)
		for _, f := range []string{"sub/old.log", "sub/deeper/old.log", "top.log"} {
			require.True(t, exists(filepath.Join(dir, QuarantineDir+".moved/t1", f)), f)
		}
	})
}

func TestSplitRel(t *testing.T) {
	require.Nil(t, splitRel("."))
	require.Equal(t, []string{"a"}, splitRel("a"))
	require.Equal(t, []string{"a", "b", "c"}, splitRel("a/b/c"))
}
