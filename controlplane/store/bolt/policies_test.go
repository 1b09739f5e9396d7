package bolt

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"tend.dev/tend/controlplane/store"
)

func pol(name, spec string) store.Policy {
	return store.Policy{Name: name, Spec: []byte(spec)}
}

func TestApplyPoliciesVersions(t *testing.T) {
	s := testStore(t, Options{})
	t1, t2, t3 := t0, t0.Add(time.Minute), t0.Add(2*time.Minute)

	steps := []struct {
		name  string
		apply []store.Policy
		now   time.Time
		want  []store.PolicyChange
	}{
		{name: "create two", now: t1,
			apply: []store.Policy{pol("web", `{"mode":"enforce","limits":{"maxPerHour":20}}`), pol("db", `{"mode":"shadow"}`)},
			want:  []store.PolicyChange{{Name: "web", Version: 1, Action: ActionCreated}, {Name: "db", Version: 1, Action: ActionCreated}}},
		{name: "same specs, other spacing and key order", now: t2,
			apply: []store.Policy{pol("web", "{\n  \"limits\": {\"maxPerHour\": 20},\n  \"mode\": \"enforce\"\n}\n"), pol("db", `{"mode":"shadow"}`)},
			want:  []store.PolicyChange{{Name: "web", Version: 1, Action: ActionUnchanged}, {Name: "db", Version: 1, Action: ActionUnchanged}}},
		{name: "one changed", now: t3,
			apply: []store.Policy{pol("web", `{"mode":"shadow","limits":{"maxPerHour":20}}`), pol("db", `{"mode":"shadow"}`)},
			want:  []store.PolicyChange{{Name: "web", Version: 2, Action: ActionConfigured}, {Name: "db", Version: 1, Action: ActionUnchanged}}},
	}
	for _, st := range steps {
		got, err := s.ApplyPolicies(st.apply, st.now)
		require.NoError(t, err, st.name)
		require.Equal(t, st.want, got, st.name)
	}

	web, err := s.GetPolicy("web")
	require.NoError(t, err)
	require.Equal(t, uint64(2), web.Version)
	require.Equal(t, t3, web.UpdatedAt)
	require.JSONEq(t, `{"mode":"shadow","limits":{"maxPerHour":20}}`, string(web.Spec))
	require.Equal(t, `{"limits":{"maxPerHour":20},"mode":"shadow"}`, string(web.Spec), "stored canonical")
	db, err := s.GetPolicy("db")
	require.NoError(t, err)
	require.Equal(t, t1, db.UpdatedAt, "an unchanged policy keeps its UpdatedAt")

	list, err := s.ListPolicies()
	require.NoError(t, err)
	require.Len(t, list, 2)
	require.Equal(t, "db", list[0].Name, "name order")
	require.Equal(t, "web", list[1].Name)
}

func TestApplyPoliciesAllOrNothing(t *testing.T) {
	s := testStore(t, Options{})
	_, err := s.ApplyPolicies([]store.Policy{pol("web", `{"a":1}`)}, t0)
	require.NoError(t, err)

	tests := []struct {
		name    string
		apply   []store.Policy
		wantErr string
	}{
		{name: "invalid json", apply: []store.Policy{pol("web", `{"a":2}`), pol("new", `{"a":`)}, wantErr: `policy "new": spec is not valid JSON`},
		{name: "trailing data", apply: []store.Policy{pol("web", `{"a":2}`), pol("new", `{"a":1} {}`)}, wantErr: "trailing data"},
		{name: "empty spec", apply: []store.Policy{pol("web", `{"a":2}`), pol("new", ` `)}, wantErr: "empty"},
		{name: "no name", apply: []store.Policy{pol("web", `{"a":2}`), pol("", `{}`)}, wantErr: "policy 2 has no name"},
		{name: "twice", apply: []store.Policy{pol("web", `{"a":2}`), pol("web", `{"a":3}`)}, wantErr: `policy "web" appears twice`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := s.ApplyPolicies(tt.apply, t0.Add(time.Hour))
			require.ErrorContains(t, err, tt.wantErr)
			web, err := s.GetPolicy("web")
			require.NoError(t, err)
			require.Equal(t, uint64(1), web.Version, "nothing applied")
			require.Equal(t, `{"a":1}`, string(web.Spec))
			_, err = s.GetPolicy("new")
			require.ErrorIs(t, err, store.ErrNotFound)
		})
	}
}

func TestDeletePolicy(t *testing.T) {
	s := testStore(t, Options{})
	_, err := s.ApplyPolicies([]store.Policy{pol("web", `{"a":1}`)}, t0)
	require.NoError(t, err)
	_, err = s.ApplyPolicies([]store.Policy{pol("web", `{"a":2}`)}, t0)
	require.NoError(t, err)

	err = s.DeletePolicy("nope")
	require.ErrorIs(t, err, store.ErrNotFound)
	require.ErrorContains(t, err, `policy "nope"`)

	require.NoError(t, s.DeletePolicy("web"))
	_, err = s.GetPolicy("web")
	require.ErrorIs(t, err, store.ErrNotFound)
	require.ErrorIs(t, s.DeletePolicy("web"), store.ErrNotFound)

	// Re-created, it continues the version sequence: version 2 of the old
	// policy and of the new one are never confused.
	got, err := s.ApplyPolicies([]store.Policy{pol("web", `{"a":1}`)}, t0)
	require.NoError(t, err)
	require.Equal(t, []store.PolicyChange{{Name: "web", Version: 3, Action: ActionCreated}}, got)
}
