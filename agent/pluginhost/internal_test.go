package pluginhost

import (
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/require"
)

func TestParseStat(t *testing.T) {
	tests := []struct {
		in            string
		state         byte
		pgrp, session int
		ok            bool
	}{
		{in: "42 (sleep) S 1 40 30 0 -1 4194304", state: 'S', pgrp: 40, session: 30, ok: true},
		{in: "42 (a) b) S 1 2 3) Z 1 40 30 0", state: 'Z', pgrp: 40, session: 30, ok: true},
		{in: "42 (x) S 1 forty 30", ok: false},
		{in: "42 (x) S 1", ok: false},
		{in: "garbage", ok: false},
		{in: "", ok: false},
	}
	for _, tt := range tests {
		state, pgrp, session, ok := parseStat([]byte(tt.in))
		require.Equal(t, tt.ok, ok, tt.in)
		if ok {
			require.Equal(t, tt.state, state, tt.in)
			require.Equal(t, tt.pgrp, pgrp, tt.in)
			require.Equal(t, tt.session, session, tt.in)
		}
	}
}

func TestSessionMembers(t *testing.T) {
	root := t.TempDir()
	procs := map[int]string{
		100: "100 (plugin) S 1 100 100 0",
		101: "101 (sh) S 100 101 100 0",     // own group, same session
		102: "102 (sleep) S 101 101 100 0",  // its child
		103: "103 (daemon) S 100 103 103 0", // left the session
		104: "104 (zombie) Z 100 100 100 0",
		105: "105 (other) S 1 105 7 0",
	}
	for pid, stat := range procs {
		dir := filepath.Join(root, strconv.Itoa(pid))
		require.NoError(t, os.Mkdir(dir, 0o755))
		require.NoError(t, os.WriteFile(filepath.Join(dir, "stat"), []byte(stat), 0o644))
	}
	require.NoError(t, os.Mkdir(filepath.Join(root, "self"), 0o755))
	require.ElementsMatch(t, []member{{100, 100}, {101, 101}, {102, 101}}, sessionMembers(root, 100))
	require.Empty(t, sessionMembers(root, 999))
	require.Empty(t, sessionMembers(filepath.Join(root, "nope"), 100))
}

func TestKillSessionNeverTouchesOurs(t *testing.T) {
	require.Zero(t, killSession(0))
	require.Zero(t, killSession(1))
	require.Zero(t, killSession(os.Getpid()))
	b, err := os.ReadFile("/proc/self/stat")
	require.NoError(t, err)
	_, _, sid, ok := parseStat(b)
	require.True(t, ok)
	require.Zero(t, killSession(sid), "the test's own session")
}

func TestHCLogger(t *testing.T) {
	var buf syncBuffer
	l := newHCLogger(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo})))
	require.Equal(t, hclog.Info, l.GetLevel())
	require.False(t, l.IsDebug())
	require.True(t, l.IsWarn())
	l.Debug("hidden")
	n := l.Named("tend-plugin-disk").With("k", "v")
	n.Info("hello", "a", 1, "timestamp", "2026-01-01", "odd")
	n.Log(hclog.Error, "bad")
	n.Named("stdio").Warn("w")
	n.StandardLogger(nil).Print("std line")
	n.Error("plugin process exited", "error", "signal: killed")
	out := buf.String()
	require.NotContains(t, out, "hidden")
	require.Contains(t, out, `level=INFO msg=hello logger=tend-plugin-disk k=v a=1 extra=odd`)
	require.NotContains(t, out, "2026-01-01")
	require.Contains(t, out, `level=ERROR msg=bad logger=tend-plugin-disk k=v`)
	require.Contains(t, out, `logger=tend-plugin-disk.stdio`)
	require.Contains(t, out, `line="std line"`)
	require.Contains(t, out, `level=WARN msg="plugin process exited"`)
	require.Equal(t, "x", n.ResetNamed("x").Name())
	require.Equal(t, []any{"k", "v"}, n.ImpliedArgs())
}

func TestLineWriter(t *testing.T) {
	var buf syncBuffer
	w := &lineWriter{log: slog.New(slog.NewTextHandler(&buf, nil)), level: slog.LevelWarn, msg: "plugin stderr"}
	_, _ = w.Write([]byte("first li"))
	_, _ = w.Write([]byte("ne\nsecond\n\nbad \xff\n"))
	_, _ = w.Write([]byte(strings.Repeat("x", maxLogLine+10)))
	out := buf.String()
	require.Contains(t, out, `line="first line"`)
	require.Contains(t, out, `line=second`)
	require.Contains(t, out, "line=\"bad \uFFFD\"")
	require.Equal(t, 4, strings.Count(out, "plugin stderr"))
}
