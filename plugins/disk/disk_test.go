package disk

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"tend.dev/tend/plugins/sdk"
)

func TestParseCleanup(t *testing.T) {
	tests := []struct {
		name   string
		action string
		params map[string]any
		want   cleanupParams
		err    string
	}{
		{name: "defaults", params: map[string]any{"path": "/var/log/app"},
			want: cleanupParams{Path: "/var/log/app", Pattern: "*", Mode: ModeDelete, QuarantineTTL: 24 * time.Hour}},
		{name: "everything", params: map[string]any{"path": "/var/log/app", "pattern": "*.log.[0-9]", "olderThan": "72h", "mode": "quarantine", "recursive": true, "quarantineTTL": "1h"},
			want: cleanupParams{Path: "/var/log/app", Pattern: "*.log.[0-9]", OlderThan: 72 * time.Hour, Mode: ModeQuarantine, Recursive: true, QuarantineTTL: time.Hour}},
		{name: "no path", params: map[string]any{}, err: "param path: required"},
		{name: "relative path", params: map[string]any{"path": "var/log"}, err: `param path: want a clean absolute path`},
		{name: "dotdot path", params: map[string]any{"path": "/var/log/app/../../../etc"}, err: `param path: want a clean absolute path`},
		{name: "root", params: map[string]any{"path": "/"}, err: `param path: refusing to clean "/"`},
		{name: "pattern with slash", params: map[string]any{"path": "/tmp/x", "pattern": "../*"}, err: `param pattern: is matched against base names and must not contain '/'`},
		{name: "bad pattern", params: map[string]any{"path": "/tmp/x", "pattern": "[a-"}, err: `param pattern: "[a-" is not a valid glob`},
		{name: "empty pattern", params: map[string]any{"path": "/tmp/x", "pattern": ""}, err: `param pattern: must not be empty`},
		{name: "bad age", params: map[string]any{"path": "/tmp/x", "olderThan": "7d"}, err: `param olderThan: want a duration such as "30s" or "10m", got "7d"`},
		{name: "negative age", params: map[string]any{"path": "/tmp/x", "olderThan": "-1h"}, err: `param olderThan: must not be negative`},
		{name: "bad mode", params: map[string]any{"path": "/tmp/x", "mode": "shred"}, err: `param mode: want "delete" or "quarantine", got "shred"`},
		{name: "recursive as string", params: map[string]any{"path": "/tmp/x", "recursive": "yes"}, err: `param recursive: want a bool`},
		{name: "bad ttl", params: map[string]any{"path": "/tmp/x", "quarantineTTL": 3600.0}, err: `param quarantineTTL: want a duration string`},
		{name: "unknown", params: map[string]any{"path": "/tmp/x", "followSymlinks": true}, err: `param followSymlinks: unknown parameter (known: mode, olderThan, path, pattern, quarantineTTL, recursive)`},
		{name: "unknown action", action: "disk.wipe", params: map[string]any{}, err: `unknown action "disk.wipe"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			action := tt.action
			if action == "" {
				action = ActionCleanup
			}
			got, err := parseCleanup(action, tt.params)
			if tt.err != "" {
				require.ErrorContains(t, err, tt.err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
		})
	}
}

// tree makes files under dir: name → age; names ending in / are directories.
func tree(t *testing.T, dir string, files map[string]time.Duration) {
	t.Helper()
	now := time.Now()
	for name, age := range files {
		p := filepath.Join(dir, name)
		if strings.HasSuffix(name, "/") {
			require.NoError(t, os.MkdirAll(p, 0o755))
			continue
		}
		require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
		require.NoError(t, os.WriteFile(p, []byte(strings.Repeat("x", 1000)), 0o644))
		require.NoError(t, os.Chtimes(p, now.Add(-age), now.Add(-age)))
	}
}

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

func cleanup(t *testing.T, taskID string, params map[string]any) sdk.ExecuteResult {
	t.Helper()
	res, err := New(nil).Execute(context.Background(), sdk.ExecuteRequest{TaskID: taskID, Action: ActionCleanup, Params: params})
	require.NoError(t, err)
	return res
}

func TestDeleteByPatternAndAge(t *testing.T) {
	dir := t.TempDir()
	tree(t, dir, map[string]time.Duration{
		"old.log": 2 * time.Hour, "new.log": time.Minute, "old.txt": 2 * time.Hour,
		"sub/old.log": 2 * time.Hour,
	})
	res := cleanup(t, "t1", map[string]any{"path": dir, "pattern": "*.log", "olderThan": "1h"})
	require.True(t, res.Success, res.Output)
	require.False(t, exists(filepath.Join(dir, "old.log")))
	require.True(t, exists(filepath.Join(dir, "new.log")))
	require.True(t, exists(filepath.Join(dir, "old.txt")))
	require.True(t, exists(filepath.Join(dir, "sub/old.log")), "not recursive")
	require.Equal(t, 1.0, res.Metrics["files_deleted"])
	require.Equal(t, 1000.0, res.Metrics["bytes_freed"])
	require.Contains(t, res.Output, `deleted 1 file(s) in "`+dir+`" matching "*.log" older than 1h0m0s`)
	require.Contains(t, res.Output, `"old.log"`)

	res = cleanup(t, "t2", map[string]any{"path": dir, "pattern": "*.log", "recursive": true})
	require.True(t, res.Success, res.Output)
	require.Equal(t, 2.0, res.Metrics["files_deleted"])
	require.False(t, exists(filepath.Join(dir, "sub/old.log")))
	require.True(t, exists(filepath.Join(dir, "sub")), "directories stay")
	require.True(t, exists(filepath.Join(dir, "old.txt")))
}

func TestSymlinkTraps(t *testing.T) {
	outside := t.TempDir()
	tree(t, outside, map[string]time.Duration{"secret.log": 48 * time.Hour, "deep/keep.log": 48 * time.Hour})
	dir := t.TempDir()
	tree(t, dir, map[string]time.Duration{"real.log": 48 * time.Hour, "sub/": 0})
	// A link inside to a file outside, one to a directory outside, a
	// relative one climbing out, and one to a file inside.
	require.NoError(t, os.Symlink(filepath.Join(outside, "secret.log"), filepath.Join(dir, "evil.log")))
	require.NoError(t, os.Symlink(outside, filepath.Join(dir, "sub", "escape")))
	require.NoError(t, os.Symlink("../../"+filepath.Base(outside)+"/secret.log", filepath.Join(dir, "sub", "climb.log")))
	require.NoError(t, os.Symlink("real.log", filepath.Join(dir, "alias.log")))

	res := cleanup(t, "t1", map[string]any{"path": dir, "recursive": true})
	require.True(t, res.Success, res.Output)
	require.Equal(t, 1.0, res.Metrics["files_deleted"], res.Output)
	require.False(t, exists(filepath.Join(dir, "real.log")))
	for _, p := range []string{"evil.log", "sub/escape", "sub/climb.log", "alias.log"} {
		require.True(t, exists(filepath.Join(dir, p)), "symlink %s must not be deleted", p)
	}
	require.True(t, exists(filepath.Join(outside, "secret.log")))
	require.True(t, exists(filepath.Join(outside, "deep/keep.log")))
	require.Contains(t, res.Output, "left alone: 4 symlinks")

	// The directory itself may not be a symlink.
	link := filepath.Join(t.TempDir(), "link")
	require.NoError(t, os.Symlink(outside, link))
	res = cleanup(t, "t2", map[string]any{"path": link})
	require.False(t, res.Success)
	require.Contains(t, res.Output, "is a symbolic link")
	require.True(t, exists(filepath.Join(outside, "secret.log")))

	// Nor a file, nor missing.
	res = cleanup(t, "t3", map[string]any{"path": filepath.Join(outside, "secret.log")})
	require.False(t, res.Success)
	require.Contains(t, res.Output, "is not a directory")
	res = cleanup(t, "t4", map[string]any{"path": filepath.Join(outside, "nope")})
	require.False(t, res.Success)
	require.Contains(t, res.Output, "no such file or directory")
}

func TestSpecialFilesAreLeftAlone(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, syscall.Mkfifo(filepath.Join(dir, "pipe.log"), 0o644))
	res := cleanup(t, "t1", map[string]any{"path": dir})
	require.True(t, res.Success, res.Output)
	require.True(t, exists(filepath.Join(dir, "pipe.log")))
	require.Contains(t, res.Output, "1 special files")
}

func TestQuarantineAndTTL(t *testing.T) {
	dir := t.TempDir()
	tree(t, dir, map[string]time.Duration{"a.log": time.Hour, "sub/b.log": time.Hour, "keep.txt": time.Hour})
	// Quarantine left by earlier tasks: one past the TTL, one not.
	tree(t, dir, map[string]time.Duration{".tend-quarantine/old-task/x.log": 0, ".tend-quarantine/recent-task/y.log": 0})
	past := time.Now().Add(-48 * time.Hour)
	require.NoError(t, os.Chtimes(filepath.Join(dir, QuarantineDir, "old-task"), past, past))

	res := cleanup(t, "task-7", map[string]any{"path": dir, "pattern": "*.log", "mode": "quarantine", "recursive": true, "quarantineTTL": "24h"})
	require.True(t, res.Success, res.Output)
	require.Equal(t, 2.0, res.Metrics["files_quarantined"])
	require.Equal(t, 2000.0, res.Metrics["bytes_quarantined"])
	require.Equal(t, 1.0, res.Metrics["quarantine_purged"])
	require.Equal(t, 1000.0, res.Metrics["bytes_freed"], "only the purge frees space")
	require.False(t, exists(filepath.Join(dir, "a.log")))
	require.False(t, exists(filepath.Join(dir, "sub/b.log")))
	require.True(t, exists(filepath.Join(dir, "keep.txt")))
	require.True(t, exists(filepath.Join(dir, QuarantineDir, "task-7", "a.log")))
	require.True(t, exists(filepath.Join(dir, QuarantineDir, "task-7", "sub", "b.log")))
	require.False(t, exists(filepath.Join(dir, QuarantineDir, "old-task")))
	require.True(t, exists(filepath.Join(dir, QuarantineDir, "recent-task", "y.log")), "quarantine is never cleaned by pattern")
	fi, err := os.Stat(filepath.Join(dir, QuarantineDir, "task-7"))
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o700), fi.Mode().Perm())

	// The same name again does not replace the quarantined copy.
	tree(t, dir, map[string]time.Duration{"a.log": time.Hour})
	res = cleanup(t, "task-7", map[string]any{"path": dir, "pattern": "a.log", "mode": "quarantine"})
	require.True(t, res.Success, res.Output)
	require.True(t, exists(filepath.Join(dir, QuarantineDir, "task-7", "a.log")))
	require.True(t, exists(filepath.Join(dir, QuarantineDir, "task-7", "a.log~1")))

	// A delete run purges too: TTL 0 purges every quarantine dir.
	res = cleanup(t, "task-8", map[string]any{"path": dir, "pattern": "nothing", "quarantineTTL": "0s"})
	require.True(t, res.Success, res.Output)
	require.Equal(t, 2.0, res.Metrics["quarantine_purged"])
	require.Equal(t, 4000.0, res.Metrics["bytes_freed"])
	entries, err := os.ReadDir(filepath.Join(dir, QuarantineDir))
	require.NoError(t, err)
	require.Empty(t, entries)
}

func TestQuarantineNeedsASafeTaskID(t *testing.T) {
	dir := t.TempDir()
	for _, id := range []string{"", "..", "../../etc", "a/b"} {
		_, err := New(nil).Execute(context.Background(), sdk.ExecuteRequest{TaskID: id, Action: ActionCleanup, Params: map[string]any{"path": dir, "mode": "quarantine"}})
		require.ErrorIs(t, err, sdk.ErrInvalidParams, "task id %q", id)
	}
}

func TestQuarantineSymlinkTrap(t *testing.T) {
	outside := t.TempDir()
	tree(t, outside, map[string]time.Duration{"victim/data.db": 100 * time.Hour})
	past := time.Now().Add(-100 * time.Hour)
	require.NoError(t, os.Chtimes(filepath.Join(outside, "victim"), past, past))
	dir := t.TempDir()
	tree(t, dir, map[string]time.Duration{"a.log": time.Hour, "olddir/": 0})
	require.NoError(t, os.Chtimes(filepath.Join(dir, "olddir"), past, past))

	// .tend-quarantine pointing outside: neither purged nor used.
	require.NoError(t, os.Symlink(outside, filepath.Join(dir, QuarantineDir)))
	res := cleanup(t, "t1", map[string]any{"path": dir, "mode": "quarantine", "quarantineTTL": "1h"})
	require.False(t, res.Success)
	require.Contains(t, res.Output, ".tend-quarantine is not a directory")
	require.True(t, exists(filepath.Join(outside, "victim/data.db")))
	require.True(t, exists(filepath.Join(dir, "a.log")))
	require.Equal(t, 0.0, res.Metrics["files_quarantined"])

	// .tend-quarantine pointing at the directory itself: not purged (old
	// directories of the cleaned directory survive).
	require.NoError(t, os.Remove(filepath.Join(dir, QuarantineDir)))
	require.NoError(t, os.Symlink(".", filepath.Join(dir, QuarantineDir)))
	res = cleanup(t, "t2", map[string]any{"path": dir, "pattern": "nothing", "quarantineTTL": "1h"})
	require.False(t, res.Success)
	require.True(t, exists(filepath.Join(dir, "olddir")))
}

func mountTmpfs(t *testing.T, dir, size string) {
	t.Helper()
	require.NoError(t, syscall.Mount("tmpfs", dir, "tmpfs", 0, "size="+size+",mode=0755"), "mounting a tmpfs needs root")
	t.Cleanup(func() { _ = syscall.Unmount(dir, syscall.MNT_DETACH) })
}

func freeBytes(t *testing.T, dir string) uint64 {
	t.Helper()
	var st syscall.Statfs_t
	require.NoError(t, syscall.Statfs(dir, &st))
	return st.Bavail * uint64(st.Bsize)
}

func TestFullTmpfs(t *testing.T) {
	dir := t.TempDir()
	mountTmpfs(t, dir, "2m")
	tree(t, dir, map[string]time.Duration{"keep.conf": 0})
	// Fill it until it is full.
	chunk := make([]byte, 64*1024)
	var written int
	for i := 0; ; i++ {
		err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("fill-%03d.dat", i)), chunk, 0o644)
		if err != nil {
			require.ErrorIs(t, err, syscall.ENOSPC)
			break
		}
		written++
	}
	require.Greater(t, written, 20)
	fills, err := filepath.Glob(filepath.Join(dir, "fill-*.dat"))
	require.NoError(t, err)
	require.GreaterOrEqual(t, len(fills), written, "the write that failed may leave a partial file")
	before := freeBytes(t, dir)

	res := cleanup(t, "t1", map[string]any{"path": dir, "pattern": "fill-*.dat"})
	require.True(t, res.Success, res.Output)
	require.Equal(t, float64(len(fills)), res.Metrics["files_deleted"])
	require.GreaterOrEqual(t, res.Metrics["bytes_freed"], float64(written*len(chunk)))
	require.Greater(t, freeBytes(t, dir), before+uint64(written-1)*uint64(len(chunk)))
	require.True(t, exists(filepath.Join(dir, "keep.conf")))
	require.Contains(t, res.Output, "… and")
	require.LessOrEqual(t, len(res.Output), sdk.MaxOutput)
}

func TestQuarantineOnTmpfsAndOtherFilesystems(t *testing.T) {
	dir := t.TempDir()
	mountTmpfs(t, dir, "2m")
	tree(t, dir, map[string]time.Duration{"a.log": time.Hour, "mnt/": 0})
	// Another file system mounted below: recursive does not enter it.
	mountTmpfs(t, filepath.Join(dir, "mnt"), "1m")
	tree(t, dir, map[string]time.Duration{"mnt/other.log": time.Hour})

	res := cleanup(t, "t1", map[string]any{"path": dir, "mode": "quarantine", "recursive": true})
	require.True(t, res.Success, res.Output)
	require.Equal(t, 1.0, res.Metrics["files_quarantined"])
	require.True(t, exists(filepath.Join(dir, QuarantineDir, "t1", "a.log")))
	require.True(t, exists(filepath.Join(dir, "mnt/other.log")))
	require.Contains(t, res.Output, "1 directories on another file system")
}

func TestThroughGRPC(t *testing.T) {
	dir := t.TempDir()
	tree(t, dir, map[string]time.Duration{"a.log": time.Hour})
	c := sdk.TestClient(t, New(nil))
	err := c.Validate(context.Background(), ActionCleanup, map[string]any{"path": "relative"})
	require.ErrorIs(t, err, sdk.ErrInvalidParams)
	res, err := c.Execute(context.Background(), sdk.ExecuteRequest{TaskID: "t1", Action: ActionCleanup, Params: map[string]any{"path": dir}})
	require.NoError(t, err)
	require.True(t, res.Success)
	require.Equal(t, 1.0, res.Metrics["files_deleted"])
	d, err := c.Describe(context.Background())
	require.NoError(t, err)
	require.Equal(t, "disk", d.GetName())
}

func TestBytesString(t *testing.T) {
	require.Equal(t, "0 B", bytesString(0))
	require.Equal(t, "1023 B", bytesString(1023))
	require.Equal(t, "1.0 KiB", bytesString(1024))
	require.Equal(t, "1.5 MiB", bytesString(1.5*1024*1024))
}
