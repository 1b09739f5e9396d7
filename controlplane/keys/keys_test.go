package keys

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"tend.dev/tend/internal/pki"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func TestRingRotation(t *testing.T) {
	dir := t.TempDir()
	c := &clock{t: time.Date(2026, 11, 25, 1, 0, 0, 0, time.UTC)}
	r, err := Open(dir, c.now)
	require.NoError(t, err)
	first := r.Active()
	require.Len(t, r.Published(), 1)
	fi, err := os.Stat(filepath.Join(dir, RingFile))
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), "the ring holds private keys")

	changes := 0
	r.OnChange(func() { changes++ })
	next, err := r.Rotate()
	require.NoError(t, err)
	require.Equal(t, StatePublished, next.State)
	require.Equal(t, first.ID, r.Active().ID, "a new key does not sign before it is activated")
	require.Len(t, r.Published(), 2, "agents are given both")

	// Activation waits for the agents unless forced.
	r.NoteHolder("a1", []string{first.ID, next.ID})
	r.NoteHolder("a2", []string{first.ID})
	require.Equal(t, 1, r.Holders(next.ID, []string{"a1", "a2"}))
	_, err = r.Activate(next.ID, 1, false)
	require.ErrorIs(t, err, ErrState)
	require.ErrorContains(t, err, "1 agent has not reported holding it")
	_, err = r.Activate(next.ID, 0, false)
	require.NoError(t, err)
	require.Equal(t, next.ID, r.Active().ID)

	// The old key is retired only once its tasks cannot be in flight.
	_, err = r.Retire(first.ID, time.Minute, false)
	require.ErrorContains(t, err, "may still be in flight")
	c.t = c.t.Add(2 * time.Minute)
	_, err = r.Retire(next.ID, time.Minute, false)
	require.ErrorContains(t, err, "active key")
	info, err := r.Retire(first.ID, time.Minute, false)
	require.NoError(t, err)
	require.Equal(t, StateRetired, info.State)
	require.Len(t, r.Published(), 1)
	require.Contains(t, r.AllPublic(), first.ID, "retired keys still verify history")
	_, err = r.Activate(first.ID, 0, true)
	require.ErrorIs(t, err, ErrState, "a retired key never signs again")
	_, err = r.Activate("nope", 0, true)
	require.ErrorIs(t, err, ErrNotFound)
	require.Equal(t, 3, changes)

	// Everything survives a restart.
	r2, err := Open(dir, c.now)
	require.NoError(t, err)
	require.Equal(t, next.ID, r2.Active().ID)
	require.Equal(t, r.List(), r2.List())
}

func TestRingAdoptsThePreRotationKey(t *testing.T) {
	dir := t.TempDir()
	old, _, err := pki.LoadOrCreateSigningKey(filepath.Join(dir, pki.SigningKeyFile))
	require.NoError(t, err)
	r, err := Open(dir, nil)
	require.NoError(t, err)
	require.Equal(t, old.ID, r.Active().ID, "agents enrolled before rotation keep their pinned key")
}

func TestRingRefusesABrokenFile(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, RingFile), []byte(`[{"id":"x","state":"active","pem":"nope"}]`), 0o600))
	_, err := Open(dir, nil)
	require.ErrorContains(t, err, "key 0 (x)")
}
