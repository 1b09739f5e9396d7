package fleet

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"tend.dev/tend/controlplane/store"
	"tend.dev/tend/controlplane/store/bolt"
	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

func testStore(t *testing.T) store.Store {
	t.Helper()
	st, err := bolt.Open(filepath.Join(t.TempDir(), "tend.db"), bolt.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	return st
}

func enroll(t *testing.T, st store.Store, r *Registry, id, name string) {
	t.Helper()
	require.NoError(t, st.CreateToken(store.Token{ID: "tok" + id, SecretHash: []byte("h"), ExpiresAt: time.Now().Add(time.Hour), Uses: 1}))
	a := store.Agent{ID: id, Name: name, Status: store.StatusDisconnected, EnrolledAt: time.Now()}
	require.NoError(t, st.EnrollAgent("tok"+id, []byte("h"), time.Now(), a))
	if r != nil {
		r.Add(a)
	}
}

func newRegistry(t *testing.T, st store.Store, ttl, grace time.Duration) *Registry {
	t.Helper()
	r, err := New(Config{Store: st, MinTTL: ttl, Grace: grace, FlushInterval: 50 * time.Millisecond, RestartGrace: ttl + grace})
	require.NoError(t, err)
	t.Cleanup(r.Stop)
	return r
}

func status(r *Registry, id string) string {
	a, _ := r.Get(id)
	return a.Status
}

func TestTTLScalesWithFleet(t *testing.T) {
	r := &Registry{cfg: Config{MinTTL: 10 * time.Second, MaxHeartbeatsPerSecond: 2000}}
	for _, c := range []struct {
		n    int
		want time.Duration
	}{{0, 10 * time.Second}, {1000, 10 * time.Second}, {20000, 10 * time.Second}, {50000, 25 * time.Second}, {100000, 50 * time.Second}} {
		require.Equal(t, c.want, r.ttlFor(c.n), "fleet of %d", c.n)
	}
}

func TestLifecycleConnectedDisconnectedDown(t *testing.T) {
	st := testStore(t)
	r := newRegistry(t, st, 200*time.Millisecond, 100*time.Millisecond)
	enroll(t, st, r, "a1", "web-1")
	require.Equal(t, store.StatusDisconnected, status(r, "a1"))

	s := NewSession(context.Background(), "a1", 4)
	a, err := r.Attach("a1", s, &agentv1.Hello{Version: "v1", Labels: map[string]string{"role": "web"}}, time.Now())
	require.NoError(t, err)
	require.Equal(t, store.StatusConnected, a.Status)
	require.Equal(t, "web", a.Labels["role"])

	// Messages keep it alive past the TTL.
	for i := 0; i < 6; i++ {
		time.Sleep(100 * time.Millisecond)
		r.Seen("a1", time.Now())
	}
	require.Equal(t, store.StatusConnected, status(r, "a1"))

	r.Detach("a1", s)
	require.Equal(t, store.StatusDisconnected, status(r, "a1"))
	require.Eventually(t, func() bool { return status(r, "a1") == store.StatusDown }, 2*time.Second, 10*time.Millisecond)

	// Persisted by the flusher.
	require.Eventually(t, func() bool {
		got, err := st.GetAgent("a1")
		return err == nil && got.Status == store.StatusDown && got.Labels["role"] == "web"
	}, 2*time.Second, 10*time.Millisecond)
}

func TestSilentStreamIsClosedWhenTimerFires(t *testing.T) {
	st := testStore(t)
	r := newRegistry(t, st, 100*time.Millisecond, 50*time.Millisecond)
	enroll(t, st, r, "a1", "web-1")
	s := NewSession(context.Background(), "a1", 4)
	_, err := r.Attach("a1", s, &agentv1.Hello{}, time.Now())
	require.NoError(t, err)
	select {
	case <-s.Context().Done():
	case <-time.After(2 * time.Second):
		t.Fatal("a half-open stream must be closed when the agent goes down")
	}
	require.Equal(t, store.StatusDown, status(r, "a1"))
}

func TestNewerStreamReplacesOlder(t *testing.T) {
	st := testStore(t)
	r := newRegistry(t, st, time.Minute, time.Second)
	enroll(t, st, r, "a1", "web-1")
	s1 := NewSession(context.Background(), "a1", 4)
	s2 := NewSession(context.Background(), "a1", 4)
	_, err := r.Attach("a1", s1, &agentv1.Hello{}, time.Now())
	require.NoError(t, err)
	_, err = r.Attach("a1", s2, &agentv1.Hello{}, time.Now())
	require.NoError(t, err)
	require.Error(t, s1.Context().Err(), "old session closed")
	r.Detach("a1", s1) // late detach of the old stream must not disconnect the new one
	require.Equal(t, store.StatusConnected, status(r, "a1"))
	require.Same(t, s2, r.Session("a1"))
}

func TestRevokeClosesAndRefuses(t *testing.T) {
	st := testStore(t)
	r := newRegistry(t, st, time.Minute, time.Second)
	enroll(t, st, r, "a1", "web-1")
	s := NewSession(context.Background(), "a1", 4)
	_, err := r.Attach("a1", s, &agentv1.Hello{}, time.Now())
	require.NoError(t, err)
	_, err = r.Revoke("web-1", time.Now())
	require.NoError(t, err)
	require.ErrorIs(t, context.Cause(s.Context()), ErrRevoked)
	require.ErrorIs(t, r.Allowed("a1"), ErrRevoked)
	_, err = r.Attach("a1", NewSession(context.Background(), "a1", 4), &agentv1.Hello{}, time.Now())
	require.ErrorIs(t, err, ErrRevoked)
	got, err := st.GetAgent("a1")
	require.NoError(t, err)
	require.True(t, got.Revoked)
}

func TestRestartMarksConnectedAgentsDisconnectedThenDown(t *testing.T) {
	st := testStore(t)
	enroll(t, st, nil, "a1", "web-1")
	require.NoError(t, st.UpdateAgent("a1", func(a *store.Agent) error { a.Status = store.StatusConnected; return nil }))
	r := newRegistry(t, st, 100*time.Millisecond, 50*time.Millisecond)
	require.Equal(t, store.StatusDisconnected, status(r, "a1"))
	// TTL + grace + stagger (< TTL): down within 250ms; allow slack.
	require.Eventually(t, func() bool { return status(r, "a1") == store.StatusDown }, 3*time.Second, 10*time.Millisecond)
}

// A timer that fires while a heartbeat is being recorded must not mark the
// agent down.
func TestStaleTimerFiringIsIgnored(t *testing.T) {
	st := testStore(t)
	r := newRegistry(t, st, time.Minute, time.Second)
	enroll(t, st, r, "a1", "web-1")
	s := NewSession(context.Background(), "a1", 4)
	_, err := r.Attach("a1", s, &agentv1.Hello{}, time.Now())
	require.NoError(t, err)
	r.expire("a1") // as if the old timer fired just after a reset
	require.Equal(t, store.StatusConnected, status(r, "a1"))
	require.NoError(t, s.Context().Err())
}

func TestHelloReplacesLabels(t *testing.T) {
	st := testStore(t)
	r := newRegistry(t, st, time.Minute, time.Second)
	enroll(t, st, r, "a1", "web-1")
	_, err := r.Attach("a1", NewSession(context.Background(), "a1", 4), &agentv1.Hello{Labels: map[string]string{"role": "web"}}, time.Now())
	require.NoError(t, err)
	a, err := r.Attach("a1", NewSession(context.Background(), "a1", 4), &agentv1.Hello{}, time.Now())
	require.NoError(t, err)
	require.Empty(t, a.Labels, "an agent restarted without labels must lose them")
}

// countingStore counts the agent writes the registry makes.
type countingStore struct {
	store.Store
	mu     sync.Mutex
	writes int
	agents int
}

func (c *countingStore) PutAgents(as []store.Agent) error {
	err := c.Store.PutAgents(as)
	c.mu.Lock()
	c.writes++
	c.agents += len(as)
	c.mu.Unlock()
	return err
}

func (c *countingStore) count() (writes, agents int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.writes, c.agents
}

// Heartbeats never cause a write of their own (issue 6, T5): lastSeen goes
// to disk with the agent's next status change, or at shutdown.
func TestHeartbeatsNeverWrite(t *testing.T) {
	st := &countingStore{Store: testStore(t)}
	r, err := New(Config{Store: st, MinTTL: time.Minute, Grace: time.Second, FlushInterval: 10 * time.Millisecond})
	require.NoError(t, err)
	enroll(t, st.Store, r, "a1", "web-1")
	enroll(t, st.Store, r, "a2", "web-2")
	s1 := NewSession(context.Background(), "a1", 4)
	_, err = r.Attach("a1", s1, &agentv1.Hello{}, time.Now())
	require.NoError(t, err)
	_, err = r.Attach("a2", NewSession(context.Background(), "a2", 4), &agentv1.Hello{}, time.Now())
	require.NoError(t, err)
	require.Eventually(t, func() bool { _, n := st.count(); return n == 2 }, 2*time.Second, time.Millisecond, "connects are written")
	writes, _ := st.count()

	// Many heartbeats over many flush intervals: nothing is written.
	var last time.Time
	for i := 0; i < 20; i++ {
		last = time.Now()
		r.Seen("a1", last)
		r.Seen("a2", last)
		time.Sleep(5 * time.Millisecond)
	}
	w, _ := st.count()
	require.Equal(t, writes, w, "heartbeats alone must not write")

	// A status change writes the agent with its latest lastSeen.
	r.Detach("a1", s1)
	require.Eventually(t, func() bool {
		got, err := st.GetAgent("a1")
		return err == nil && got.Status == store.StatusDisconnected && got.LastSeen.Equal(last)
	}, 2*time.Second, time.Millisecond)
	got, err := st.GetAgent("a2")
	require.NoError(t, err)
	require.True(t, got.LastSeen.Before(last), "a2's lastSeen waits for its next status change")

	// Shutdown writes every lastSeen.
	r.Stop()
	got, err = st.GetAgent("a2")
	require.NoError(t, err)
	require.True(t, got.LastSeen.Equal(last))
}

// A flush writes only the agents that changed, not the whole fleet.
func TestFlushWritesOnlyChangedAgents(t *testing.T) {
	st := &countingStore{Store: testStore(t)}
	r, err := New(Config{Store: st, MinTTL: time.Minute, Grace: time.Second, FlushInterval: time.Hour})
	require.NoError(t, err)
	t.Cleanup(r.Stop)
	for i := range 10 {
		enroll(t, st.Store, r, fmt.Sprintf("a%d", i), fmt.Sprintf("web-%d", i))
	}
	_, err = r.Attach("a3", NewSession(context.Background(), "a3", 4), &agentv1.Hello{}, time.Now())
	require.NoError(t, err)
	require.Eventually(t, func() bool { _, n := st.count(); return n == 1 }, 2*time.Second, time.Millisecond)
	// NoteDropped does not start a flush (it waits for the next one), so it
	// goes first: SetCertExpiry's flush then writes both.
	r.NoteDropped("a5", 7)
	r.SetCertExpiry("a4", time.Now().Add(time.Hour))
	require.Eventually(t, func() bool { _, n := st.count(); return n == 3 }, 2*time.Second, time.Millisecond)
	got, err := st.GetAgent("a5")
	require.NoError(t, err)
	require.EqualValues(t, 7, got.OutboxDropped)
}

func TestListSortedByNameAfterAdds(t *testing.T) {
	st := testStore(t)
	r := newRegistry(t, st, time.Minute, time.Second)
	enroll(t, st, r, "a2", "web-b")
	enroll(t, st, r, "a1", "web-c")
	names := func() []string {
		var out []string
		for _, a := range r.List() {
			out = append(out, a.Name)
		}
		return out
	}
	require.Equal(t, []string{"web-b", "web-c"}, names())
	enroll(t, st, r, "a3", "web-a")
	require.Equal(t, []string{"web-a", "web-b", "web-c"}, names())
	// Copies, not the registry's own entries.
	l := r.List()
	l[0].Status = "bogus"
	require.NotEqual(t, "bogus", status(r, "a3"))
}

// Back-pressure is not silence: while the control plane holds an agent's
// messages (handling them, or queued for commit), the agent stays
// connected however long that takes; after the last release it has a full
// TTL plus grace before it is marked down.
func TestHeldMessagesKeepAgentAlive(t *testing.T) {
	st := testStore(t)
	r := newRegistry(t, st, 100*time.Millisecond, 50*time.Millisecond)
	enroll(t, st, r, "a1", "web-1")
	s := NewSession(context.Background(), "a1", 4)
	_, err := r.Attach("a1", s, &agentv1.Hello{}, time.Now())
	require.NoError(t, err)

	s.Hold()
	s.Hold()
	time.Sleep(500 * time.Millisecond) // more than three TTLs plus grace
	require.Equal(t, store.StatusConnected, status(r, "a1"))
	require.NoError(t, s.Context().Err())

	s.Release()
	time.Sleep(300 * time.Millisecond) // one still held
	require.Equal(t, store.StatusConnected, status(r, "a1"))

	released := time.Now()
	s.Release()
	select {
	case <-s.Context().Done():
	case <-time.After(2 * time.Second):
		t.Fatal("an agent silent after its messages were released must go down")
	}
	require.Equal(t, store.StatusDown, status(r, "a1"))
	require.GreaterOrEqual(t, time.Since(released), 150*time.Millisecond, "a full TTL plus grace after the last release")
}

// A stream set up while the control plane stops is refused: Stop closed the
// sessions it knew of, and a later one would hold up the shutdown.
func TestAttachAfterStopIsRefused(t *testing.T) {
	st := testStore(t)
	r := newRegistry(t, st, time.Minute, time.Second)
	enroll(t, st, r, "a1", "web-1")
	r.Stop()
	_, err := r.Attach("a1", NewSession(context.Background(), "a1", 4), &agentv1.Hello{}, time.Now())
	require.ErrorIs(t, err, ErrStopping)
}
