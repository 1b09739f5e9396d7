//go:build linux

package pluginhost

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/hashicorp/go-plugin"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// A plugin binary swapped after the host verified it and before it starts
// never runs: neither a file renamed over it nor one written into it.
// What runs is the verified copy; later starts refuse the changed file.
func TestSwapAfterVerifyCannotRun(t *testing.T) {
	orig, err := os.ReadFile(filepath.Join(binDir, "tend-plugin-exec"))
	require.NoError(t, err)

	for _, tc := range []struct {
		name    string
		noMemfd bool // the fallback: hash and exec an open descriptor
		inPlace bool // write into the file instead of renaming over it
		wantVia string
	}{
		{name: "memfd, renamed over", wantVia: "memfd"},
		{name: "memfd, written into", inPlace: true, wantVia: "memfd"},
		{name: "descriptor, renamed over", noMemfd: true, wantVia: "fd"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			bin := filepath.Join(dir, "tend-plugin-exec")
			require.NoError(t, os.WriteFile(bin, orig, 0o755))
			// The impostor: a script that leaves a mark if it ever runs.
			marker := filepath.Join(t.TempDir(), "impostor-ran")
			impostor := []byte("#!/bin/sh\necho ran > '" + marker + "'\nsleep 30\n")
			h, logs := newHost(t, dir)

			swaps := 0
			afterVerify = func(path string) {
				swaps++
				require.Equal(t, bin, path)
				if tc.inPlace {
					require.NoError(t, os.WriteFile(path, impostor, 0o755)) // same inode, truncated and rewritten
					return
				}
				tmp := filepath.Join(dir, "impostor")
				require.NoError(t, os.WriteFile(tmp, impostor, 0o755))
				require.NoError(t, os.Rename(tmp, path))
			}
			if tc.noMemfd {
				memfdCreate = func(string, int) (int, error) { return -1, unix.ENOSYS }
			}
			t.Cleanup(func() { afterVerify, memfdCreate = func(string) {}, unix.MemfdCreate })

			resp, err := h.Execute(context.Background(), "exec.run", params(t, map[string]any{"argv": []any{"/bin/true"}}), "t1", 10*time.Second)
			require.NoError(t, err)
			require.True(t, resp.GetSuccess(), resp.GetOutput())
			require.Equal(t, 1, swaps)
			require.Contains(t, logs.String(), "verified_via="+tc.wantVia)
			pid := pidOf(h, "exec")
			require.NotZero(t, pid)
			exe, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe")
			require.NoError(t, err)
			if tc.wantVia == "memfd" {
				require.Contains(t, exe, "memfd:tend-plugin-exec", "the plugin runs from the sealed copy")
			} else {
				require.Contains(t, exe, "(deleted)", "the plugin runs the inode that was verified, since replaced")
			}
			_, err = os.Stat(marker)
			require.ErrorIs(t, err, os.ErrNotExist, "the swapped-in binary ran")
			comm, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm")
			require.NoError(t, err)
			require.Equal(t, "tend-plugin-exe\n", string(comm), "the plugin has its name back (15 bytes at most)")

			// Once the plugin is gone, the changed file is refused.
			afterVerify = func(string) {}
			h.Close()
			h2, _ := newHost(t, dir)
			h2.cat["exec"] = h.cat["exec"] // the catalog of the agent's start
			_, err = h2.Execute(context.Background(), "exec.run", params(t, map[string]any{"argv": []any{"/bin/true"}}), "t2", 10*time.Second)
			require.ErrorIs(t, err, ErrRefused)
			require.ErrorIs(t, err, plugin.ErrChecksumsDoNotMatch)
			_, err = os.Stat(marker)
			require.ErrorIs(t, err, os.ErrNotExist, "the changed binary ran")
		})
	}
}

// The sealed copy cannot be written, even through the descriptor the
// plugin inherits.
func TestMemfdCopyIsSealed(t *testing.T) {
	path := filepath.Join(binDir, "tend-plugin-exec")
	cat, err := LoadCatalog(binDir)
	require.NoError(t, err)
	cmd, pinned, secure, how, err := verifiedCmd("exec", cat["exec"])
	require.NoError(t, err)
	defer pinned.Close()
	require.Equal(t, "memfd", how)
	require.Nil(t, secure)
	require.Equal(t, "/proc/self/fd/3", cmd.Path)
	require.Equal(t, []string{path}, cmd.Args)
	_, err = pinned.WriteAt([]byte("x"), 0)
	require.ErrorIs(t, err, unix.EPERM)
	require.ErrorIs(t, pinned.Truncate(0), unix.EPERM)
	seals, err := unix.FcntlInt(pinned.Fd(), unix.F_GET_SEALS, 0)
	require.NoError(t, err)
	require.Equal(t, memfdSeals, seals)

	// A catalog entry that does not match is refused before anything runs.
	bad := cat["exec"]
	bad.SHA256 = make([]byte, 32)
	_, _, _, _, err = verifiedCmd("exec", bad)
	require.ErrorIs(t, err, plugin.ErrChecksumsDoNotMatch)
}
