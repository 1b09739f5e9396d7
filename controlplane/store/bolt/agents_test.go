package bolt

import (
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"tend.dev/tend/controlplane/store"
)

func TestCreateToken(t *testing.T) {
	s := testStore(t, Options{})
	good := store.Token{ID: "abc", SecretHash: hash("x"), Uses: 1, ExpiresAt: t0.Add(time.Hour)}
	require.NoError(t, s.CreateToken(good))

	tests := []struct {
		name    string
		tok     store.Token
		wantIs  error
		wantErr string
	}{
		{name: "same id", tok: good, wantIs: store.ErrExists},
		{name: "empty id", tok: store.Token{SecretHash: hash("x"), Uses: 1}, wantErr: "empty id"},
		{name: "no secret", tok: store.Token{ID: "t2", Uses: 1}, wantErr: "empty secret hash"},
		{name: "zero uses", tok: store.Token{ID: "t3", SecretHash: hash("x")}, wantErr: "uses must be at least 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := s.CreateToken(tt.tok)
			require.Error(t, err)
			if tt.wantIs != nil {
				require.ErrorIs(t, err, tt.wantIs)
			}
			require.ErrorContains(t, err, tt.wantErr)
		})
	}
}

func TestEnrollAgentTokenRefusals(t *testing.T) {
	s := testStore(t, Options{})
	require.NoError(t, s.CreateToken(store.Token{ID: "single", SecretHash: hash("s1"), ExpiresAt: t0.Add(time.Hour), Uses: 1}))
	require.NoError(t, s.CreateToken(store.Token{ID: "old", SecretHash: hash("s2"), ExpiresAt: t0, Uses: 5}))
	require.NoError(t, s.CreateToken(store.Token{ID: "forever", SecretHash: hash("s3"), Uses: 5}))
	require.NoError(t, s.EnrollAgent("single", hash("s1"), t0, store.Agent{ID: "a0", Name: "first"}))

	tests := []struct {
		name   string
		token  string
		secret string
		now    time.Time
		want   error
	}{
		{name: "unknown token", token: "nope", secret: "s1", now: t0, want: store.ErrTokenUnknown},
		{name: "wrong secret", token: "forever", secret: "s1", now: t0, want: store.ErrTokenUnknown},
		{name: "empty secret", token: "forever", secret: "", now: t0, want: store.ErrTokenUnknown},
		{name: "expired exactly at ExpiresAt", token: "old", secret: "s2", now: t0, want: store.ErrTokenExpired},
		{name: "expired later", token: "old", secret: "s2", now: t0.Add(time.Minute), want: store.ErrTokenExpired},
		{name: "used up", token: "single", secret: "s1", now: t0, want: store.ErrTokenUsedUp},
		{name: "no expiry is fine", token: "forever", secret: "s3", now: t0.AddDate(10, 0, 0)},
		{name: "before expiry is fine", token: "old", secret: "s2", now: t0.Add(-time.Second)},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := "agent-" + string(rune('a'+i))
			secret := hash(tt.secret)
			if tt.secret == "" {
				secret = nil
			}
			err := s.EnrollAgent(tt.token, secret, tt.now, store.Agent{ID: id, Name: id})
			if tt.want == nil {
				require.NoError(t, err)
				_, err = s.GetAgent(id)
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, tt.want)
			require.ErrorContains(t, err, tt.token, "the error names the token")
			_, err = s.GetAgent(id)
			require.ErrorIs(t, err, store.ErrNotFound, "a refused enrollment creates nothing")
		})
	}

	// Unknown token and wrong secret are indistinguishable.
	e1 := s.EnrollAgent("forever", hash("wrong"), t0, store.Agent{ID: "x1", Name: "x1"})
	require.ErrorIs(t, e1, store.ErrTokenUnknown)
	require.NotErrorIs(t, e1, store.ErrTokenExpired)
}

func TestEnrollAgentCountedToken(t *testing.T) {
	s := testStore(t, Options{})
	require.NoError(t, s.CreateToken(store.Token{ID: "three", SecretHash: hash("s"), ExpiresAt: t0.Add(time.Hour), Uses: 3}))
	for _, id := range []string{"a1", "a2", "a3"} {
		require.NoError(t, s.EnrollAgent("three", hash("s"), t0, store.Agent{ID: id, Name: "host-" + id}))
	}
	err := s.EnrollAgent("three", hash("s"), t0, store.Agent{ID: "a4", Name: "host-a4"})
	require.ErrorIs(t, err, store.ErrTokenUsedUp)
	require.ErrorContains(t, err, "all 3 uses consumed")

	agents, err := s.ListAgents()
	require.NoError(t, err)
	require.Len(t, agents, 3)
	for _, a := range agents {
		require.Equal(t, t0, a.EnrolledAt, "EnrolledAt defaults to now")
	}
}

func TestEnrollAgentRefusalKeepsTheUse(t *testing.T) {
	s := testStore(t, Options{})
	enroll(t, s, "a1", "web-1")
	require.NoError(t, s.CreateToken(store.Token{ID: "one", SecretHash: hash("s"), Uses: 1}))

	err := s.EnrollAgent("one", hash("s"), t0, store.Agent{ID: "a2", Name: "web-1"})
	require.ErrorIs(t, err, store.ErrNameTaken)
	require.ErrorContains(t, err, `agent name "web-1" is held by agent a1`)
	// The use was not consumed: the same single-use token works with a free name.
	require.NoError(t, s.EnrollAgent("one", hash("s"), t0, store.Agent{ID: "a2", Name: "web-2"}))
}

func TestEnrollAgentNamesAndIDs(t *testing.T) {
	s := testStore(t, Options{})
	a1 := enroll(t, s, "a1", "web-1")
	require.NoError(t, s.CreateToken(store.Token{ID: "many", SecretHash: hash("s"), Uses: 10}))
	enrollMany := func(id, name string) error {
		return s.EnrollAgent("many", hash("s"), t0, store.Agent{ID: id, Name: name})
	}

	require.ErrorIs(t, enrollMany("a2", "web-1"), store.ErrNameTaken)

	// Revoke a1: its name is free again, its id never is.
	require.NoError(t, s.UpdateAgent("a1", func(a *store.Agent) error {
		a.Revoked, a.RevokedAt, a.Status = true, t0, store.StatusDown
		return nil
	}))
	err := enrollMany("a1", "web-9")
	require.ErrorIs(t, err, store.ErrExists)
	require.ErrorContains(t, err, "never reused")
	require.NoError(t, enrollMany("a2", "web-1"))

	byName, err := s.GetAgentByName("web-1")
	require.NoError(t, err)
	require.Equal(t, "a2", byName.ID)
	old, err := s.GetAgent("a1")
	require.NoError(t, err)
	require.True(t, old.Revoked)
	require.Equal(t, a1.Labels, old.Labels)

	// And a2 holds the name now.
	require.ErrorIs(t, enrollMany("a3", "web-1"), store.ErrNameTaken)

	// Ids with the key separator are refused.
	require.ErrorContains(t, enrollMany("a\x00b", "web-x"), "NUL")
	require.ErrorContains(t, enrollMany("", "web-x"), "empty agent id")
	require.ErrorContains(t, enrollMany("a9", ""), "empty name")
}

func TestGetAgent(t *testing.T) {
	s := testStore(t, Options{})
	enroll(t, s, "a1", "web-1")

	_, err := s.GetAgent("zz")
	require.ErrorIs(t, err, store.ErrNotFound)
	require.ErrorContains(t, err, `"zz"`)
	_, err = s.GetAgentByName("nobody")
	require.ErrorIs(t, err, store.ErrNotFound)
	require.ErrorContains(t, err, `"nobody"`)

	a, err := s.GetAgentByName("web-1")
	require.NoError(t, err)
	require.Equal(t, "a1", a.ID)
	require.Equal(t, map[string]string{"role": "web"}, a.Labels)
}

func TestUpdateAgent(t *testing.T) {
	s := testStore(t, Options{})
	enroll(t, s, "a1", "web-1")
	enroll(t, s, "a2", "web-2")

	require.ErrorIs(t, s.UpdateAgent("zz", func(*store.Agent) error { return nil }), store.ErrNotFound)

	boom := errors.New("boom")
	require.ErrorIs(t, s.UpdateAgent("a1", func(a *store.Agent) error {
		a.Version = "changed"
		return boom
	}), boom)
	a, err := s.GetAgent("a1")
	require.NoError(t, err)
	require.Empty(t, a.Version, "fn's error aborts the update")

	require.NoError(t, s.UpdateAgent("a1", func(a *store.Agent) error {
		a.Version, a.Status, a.LastSeen = "1.2.3", store.StatusConnected, t0
		a.Labels["zone"] = "a"
		return nil
	}))
	a, err = s.GetAgent("a1")
	require.NoError(t, err)
	require.Equal(t, "1.2.3", a.Version)
	require.Equal(t, store.StatusConnected, a.Status)
	require.Equal(t, map[string]string{"role": "web", "zone": "a"}, a.Labels)

	// Renames keep names unique and the index right.
	require.ErrorIs(t, s.UpdateAgent("a1", func(a *store.Agent) error { a.Name = "web-2"; return nil }), store.ErrNameTaken)
	require.NoError(t, s.UpdateAgent("a1", func(a *store.Agent) error { a.Name = "web-1b"; return nil }))
	_, err = s.GetAgentByName("web-1")
	require.ErrorIs(t, err, store.ErrNotFound)
	a, err = s.GetAgentByName("web-1b")
	require.NoError(t, err)
	require.Equal(t, "a1", a.ID)

	require.ErrorContains(t, s.UpdateAgent("a1", func(a *store.Agent) error { a.ID = "other"; return nil }), "id cannot change")
}

func TestPutAgents(t *testing.T) {
	s := testStore(t, Options{})
	a1 := enroll(t, s, "a1", "web-1")
	a2 := enroll(t, s, "a2", "web-2")

	a1.Status, a1.LastSeen = store.StatusConnected, t0.Add(time.Minute)
	a2.Status, a2.LastSeen = store.StatusDown, t0.Add(2*time.Minute)
	require.NoError(t, s.PutAgents([]store.Agent{a1, a2}))
	got, err := s.ListAgents()
	require.NoError(t, err)
	require.Len(t, got, 2)
	require.Equal(t, store.StatusConnected, got[0].Status)
	require.Equal(t, t0.Add(time.Minute), got[0].LastSeen)
	require.Equal(t, store.StatusDown, got[1].Status)

	// All or none: an unknown id fails the whole call.
	a1.Version = "9.9"
	err = s.PutAgents([]store.Agent{a1, {ID: "ghost", Name: "ghost"}})
	require.ErrorIs(t, err, store.ErrNotFound)
	require.ErrorContains(t, err, "ghost")
	got1, err := s.GetAgent("a1")
	require.NoError(t, err)
	require.Empty(t, got1.Version)

	require.NoError(t, s.PutAgents(nil))
}

func TestAgentWritesKeepInvariants(t *testing.T) {
	s := testStore(t, Options{})
	enroll(t, s, "a1", "web-1")
	// A stale copy, as the fleet registry may hold.
	stale, err := s.GetAgent("a1")
	require.NoError(t, err)

	require.NoError(t, s.UpdateAgent("a1", func(a *store.Agent) error {
		a.Revoked, a.RevokedAt, a.OutboxDropped = true, t0, 7
		return nil
	}))
	stale.Status, stale.LastSeen = store.StatusConnected, t0.Add(time.Hour)
	require.NoError(t, s.PutAgents([]store.Agent{stale}))

	a, err := s.GetAgent("a1")
	require.NoError(t, err)
	require.True(t, a.Revoked, "revocation sticks")
	require.Equal(t, t0, a.RevokedAt)
	require.Equal(t, uint64(7), a.OutboxDropped, "OutboxDropped never goes down")
	require.Equal(t, t0.Add(time.Hour), a.LastSeen, "the rest is written")

	require.NoError(t, s.UpdateAgent("a1", func(a *store.Agent) error {
		a.Revoked, a.RevokedAt = false, time.Time{}
		return nil
	}))
	a, err = s.GetAgent("a1")
	require.NoError(t, err)
	require.True(t, a.Revoked)
	require.Equal(t, t0, a.RevokedAt)
}
