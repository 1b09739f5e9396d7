package bolt

import (
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"tend.dev/tend/controlplane/store"
	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

func TestCommitResultsDedupe(t *testing.T) {
	s := testStore(t, Options{})
	enroll(t, s, "a1", "web-1")
	enroll(t, s, "a2", "web-2")

	steps := []struct {
		name    string
		batches []store.ResultBatch
		want    []store.CommitOutcome
		stored  uint64 // a1's counters after the step
		hwm     uint64
	}{
		{name: "first batch",
			batches: []store.ResultBatch{{AgentID: "a1", Results: results("http", 1, 5)}},
			want:    []store.CommitOutcome{{Stored: 5, AckedThrough: 5}}, stored: 5, hwm: 5},
		{name: "same batch again",
			batches: []store.ResultBatch{{AgentID: "a1", Results: results("http", 1, 5)}},
			want:    []store.CommitOutcome{{Duplicates: 5, AckedThrough: 5}}, stored: 5, hwm: 5},
		{name: "overlapping",
			batches: []store.ResultBatch{{AgentID: "a1", Results: results("http", 4, 8)}},
			want:    []store.CommitOutcome{{Stored: 3, Duplicates: 2, AckedThrough: 8}}, stored: 8, hwm: 8},
		{name: "two batches of one agent and one of another in one call, overlapping each other",
			batches: []store.ResultBatch{
				{AgentID: "a1", Results: results("http", 9, 10)},
				{AgentID: "a2", Results: results("disk", 1, 3)},
				{AgentID: "a1", Results: results("http", 10, 12)},
			},
			want: []store.CommitOutcome{
				{Stored: 2, AckedThrough: 10},
				{Stored: 3, AckedThrough: 3},
				{Stored: 2, Duplicates: 1, AckedThrough: 12},
			}, stored: 12, hwm: 12},
		{name: "empty batch reports the high-water mark",
			batches: []store.ResultBatch{{AgentID: "a1"}},
			want:    []store.CommitOutcome{{AckedThrough: 12}}, stored: 12, hwm: 12},
	}
	for _, st := range steps {
		require.Equal(t, st.want, commit(t, s, st.batches...), st.name)
		c, err := s.Counters("a1")
		require.NoError(t, err)
		require.Equal(t, store.AgentCounters{ResultsStored: st.stored, HighWater: st.hwm}, c, st.name)
	}

	got, err := s.ListResults("a1", "http", 0)
	require.NoError(t, err)
	require.Equal(t, []uint64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, seqs(got), "each result stored once, in order")
	require.True(t, proto.Equal(results("http", 7, 7)[0], got[6]), "the stored result is the one sent")

	c, err := s.Counters("a2")
	require.NoError(t, err)
	require.Equal(t, store.AgentCounters{ResultsStored: 3, HighWater: 3}, c)
	_, err = s.Counters("zz")
	require.ErrorIs(t, err, store.ErrNotFound)

	require.NoError(t, s.Verify())
}

func TestCommitResultsRefusesOneBatchOnly(t *testing.T) {
	s := testStore(t, Options{})
	enroll(t, s, "a1", "web-1")
	enroll(t, s, "gone", "web-2")
	require.NoError(t, s.UpdateAgent("gone", func(a *store.Agent) error { a.Revoked = true; return nil }))

	outs := commit(t, s,
		store.ResultBatch{AgentID: "ghost", Results: results("http", 1, 2)},
		store.ResultBatch{AgentID: "gone", Results: results("http", 1, 2)},
		store.ResultBatch{AgentID: "a1", Results: []*agentv1.CheckResult{result(1, "bad\x00id", stOK, t0)}},
		store.ResultBatch{AgentID: "a1", Results: []*agentv1.CheckResult{result(1, "", stOK, t0)}},
		store.ResultBatch{AgentID: "a1", Results: []*agentv1.CheckResult{nil}},
		store.ResultBatch{AgentID: "", Results: results("http", 1, 1)},
		store.ResultBatch{AgentID: "a1", Results: results("http", 1, 3)},
	)
	require.ErrorIs(t, outs[0].Err, store.ErrNotFound)
	require.ErrorContains(t, outs[0].Err, "ghost")
	require.ErrorIs(t, outs[1].Err, store.ErrRevoked)
	require.ErrorContains(t, outs[2].Err, "NUL")
	require.ErrorContains(t, outs[3].Err, "no check id")
	require.ErrorContains(t, outs[4].Err, "nil")
	require.ErrorContains(t, outs[5].Err, "empty agent id")
	for _, o := range outs[:6] {
		require.Zero(t, o.Stored)
		require.Zero(t, o.AckedThrough)
	}
	require.Equal(t, store.CommitOutcome{Stored: 3, AckedThrough: 3}, outs[6], "the good batch is stored")

	c, err := s.Counters("gone")
	require.NoError(t, err)
	require.Zero(t, c.ResultsStored)
	got, err := s.ListResults("a1", "http", 0)
	require.NoError(t, err)
	require.Equal(t, []uint64{1, 2, 3}, seqs(got))

	outs, err = s.CommitResults(nil)
	require.NoError(t, err)
	require.Empty(t, outs)
}

func TestHistoryBound(t *testing.T) {
	s := testStore(t, Options{HistoryPerCheck: 5})
	enroll(t, s, "a1", "web-1")

	// Results of two checks interleaved, in batches of various sizes.
	var seq uint64
	next := func(n int) []*agentv1.CheckResult {
		var rs []*agentv1.CheckResult
		for range n {
			seq++
			check := "http"
			if seq%3 == 0 {
				check = "disk"
			}
			rs = append(rs, result(seq, check, stOK, t0.Add(time.Duration(seq)*time.Second)))
		}
		return rs
	}
	for _, n := range []int{1, 2, 7, 1, 13} {
		commit(t, s, store.ResultBatch{AgentID: "a1", Results: next(n)})
	}
	// 24 results: disk got 3,6,...,24; http the rest.
	tests := []struct {
		check string
		limit int
		want  []uint64
	}{
		{check: "http", limit: 0, want: []uint64{17, 19, 20, 22, 23}},
		{check: "disk", limit: 0, want: []uint64{12, 15, 18, 21, 24}},
		{check: "http", limit: 2, want: []uint64{22, 23}},
		{check: "http", limit: 5, want: []uint64{17, 19, 20, 22, 23}},
		{check: "http", limit: 50, want: []uint64{17, 19, 20, 22, 23}},
		{check: "nope", limit: 0, want: []uint64{}},
		{check: "htt", limit: 3, want: []uint64{}},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s/%d", tt.check, tt.limit), func(t *testing.T) {
			got, err := s.ListResults("a1", tt.check, tt.limit)
			require.NoError(t, err)
			require.Equal(t, tt.want, seqs(got))
		})
	}
	states, err := s.ListCheckStates("a1")
	require.NoError(t, err)
	require.Len(t, states, 2)
	for _, st := range states {
		require.Equal(t, uint64(5), st.HistoryLen, st.CheckID)
	}
	require.NoError(t, s.Verify())

	c, err := s.Counters("a1")
	require.NoError(t, err)
	require.Equal(t, store.AgentCounters{ResultsStored: 24, HighWater: 24}, c, "counters count every result, not the bounded history")
}

func TestHistoryBoundLoweredOnReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tend.db")
	s, err := Open(path, Options{HistoryPerCheck: 10})
	require.NoError(t, err)
	enroll(t, s, "a1", "web-1")
	commit(t, s, store.ResultBatch{AgentID: "a1", Results: results("http", 1, 10)})
	require.NoError(t, s.Close())

	s = testStoreAt(t, path, Options{HistoryPerCheck: 3})
	commit(t, s, store.ResultBatch{AgentID: "a1", Results: results("http", 11, 11)})
	got, err := s.ListResults("a1", "http", 0)
	require.NoError(t, err)
	require.Equal(t, []uint64{9, 10, 11}, seqs(got))
	require.NoError(t, s.Verify())
}

func TestCheckStateSinceAndStreak(t *testing.T) {
	s := testStore(t, Options{})
	enroll(t, s, "a1", "web-1")
	at := func(sec int) time.Time { return t0.Add(time.Duration(sec) * time.Second) }

	steps := []struct {
		status     agentv1.CheckStatus
		sec        int
		wantSince  int
		wantStreak uint64
	}{
		{stOK, 1, 1, 1},
		{stOK, 2, 1, 2},
		{stOK, 3, 1, 3},
		{stCrit, 4, 4, 1},
		{stCrit, 5, 4, 2},
		{stWarn, 6, 6, 1},
		{stOK, 7, 7, 1},
		{stOK, 8, 7, 2},
	}
	for i, st := range steps {
		commit(t, s, store.ResultBatch{AgentID: "a1", Results: []*agentv1.CheckResult{result(uint64(i+1), "http", st.status, at(st.sec))}})
		states, err := s.ListCheckStates("a1")
		require.NoError(t, err)
		require.Len(t, states, 1)
		got := states[0]
		require.Equal(t, "a1", got.AgentID)
		require.Equal(t, "http", got.CheckID)
		require.Equal(t, uint64(i+1), got.Last.GetSeq(), "step %d", i)
		require.Equal(t, st.status, got.Last.GetStatus())
		require.True(t, at(st.wantSince).Equal(got.Since), "step %d: since %s, want %s", i, got.Since, at(st.wantSince))
		require.Equal(t, st.wantStreak, got.Streak, "step %d", i)
		require.Equal(t, uint64(i+1), got.HistoryLen)
	}

	// Within one batch, the same rules apply result by result.
	commit(t, s, store.ResultBatch{AgentID: "a1", Results: []*agentv1.CheckResult{
		result(9, "http", stCrit, at(9)), result(10, "http", stCrit, at(10)), result(11, "http", stCrit, at(11)),
	}})
	states, err := s.ListCheckStates("a1")
	require.NoError(t, err)
	require.Equal(t, uint64(3), states[0].Streak)
	require.True(t, at(9).Equal(states[0].Since))

	// No started_at: since is the commit time.
	s.now = func() time.Time { return at(100) }
	commit(t, s, store.ResultBatch{AgentID: "a1", Results: []*agentv1.CheckResult{{Seq: 12, CheckId: "http", Status: stOK}}})
	states, err = s.ListCheckStates("a1")
	require.NoError(t, err)
	require.True(t, at(100).Equal(states[0].Since))
}

func TestListCheckStates(t *testing.T) {
	s := testStore(t, Options{})
	enroll(t, s, "a1", "web-1")
	enroll(t, s, "a10", "web-10")
	enroll(t, s, "a2", "web-2")
	commit(t, s,
		store.ResultBatch{AgentID: "a1", Results: []*agentv1.CheckResult{result(1, "http", stOK, t0), result(2, "disk", stOK, t0)}},
		store.ResultBatch{AgentID: "a10", Results: []*agentv1.CheckResult{result(1, "http", stCrit, t0)}},
		store.ResultBatch{AgentID: "a2", Results: []*agentv1.CheckResult{result(1, "local/x", stOK, t0)}},
	)
	key := func(sts []store.CheckState) []string {
		var out []string
		for _, st := range sts {
			out = append(out, st.AgentID+"/"+st.CheckID)
		}
		return out
	}
	tests := []struct {
		agent string
		want  []string
	}{
		{"", []string{"a1/disk", "a1/http", "a10/http", "a2/local/x"}},
		{"a1", []string{"a1/disk", "a1/http"}}, // not a10's: the prefix ends with the separator
		{"a10", []string{"a10/http"}},
		{"a3", nil},
	}
	for _, tt := range tests {
		got, err := s.ListCheckStates(tt.agent)
		require.NoError(t, err)
		require.Equal(t, tt.want, key(got), "agent %q", tt.agent)
	}
	_, err := s.ListResults("", "http", 0)
	require.Error(t, err)
}

func TestCommitResultsOutboxDropped(t *testing.T) {
	s := testStore(t, Options{})
	enroll(t, s, "a1", "web-1")
	for _, tt := range []struct{ sent, want uint64 }{{0, 0}, {5, 5}, {3, 5}, {9, 9}} {
		commit(t, s, store.ResultBatch{AgentID: "a1", OutboxDropped: tt.sent})
		a, err := s.GetAgent("a1")
		require.NoError(t, err)
		require.Equal(t, tt.want, a.OutboxDropped)
	}
}

func TestReopenKeepsEverything(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tend.db")
	s, err := Open(path, Options{})
	require.NoError(t, err)
	enroll(t, s, "a1", "web-1")
	require.NoError(t, s.CreateToken(store.Token{ID: "t", SecretHash: hash("s"), Uses: 2}))
	_, err = s.ApplyPolicies([]store.Policy{pol("web", `{"a":1}`)}, t0)
	require.NoError(t, err)
	commit(t, s, store.ResultBatch{AgentID: "a1", Results: results("http", 1, 4), OutboxDropped: 2})
	agentsBefore, err := s.ListAgents()
	require.NoError(t, err)
	statesBefore, err := s.ListCheckStates("")
	require.NoError(t, err)
	require.NoError(t, s.Close())

	s = testStoreAt(t, path, Options{})
	require.NoError(t, s.Verify())
	agents, err := s.ListAgents()
	require.NoError(t, err)
	require.Equal(t, agentsBefore, agents)
	require.Equal(t, uint64(2), agents[0].OutboxDropped)
	p, err := s.GetPolicy("web")
	require.NoError(t, err)
	require.Equal(t, uint64(1), p.Version)
	got, err := s.ListResults("a1", "http", 0)
	require.NoError(t, err)
	require.Equal(t, []uint64{1, 2, 3, 4}, seqs(got))
	states, err := s.ListCheckStates("")
	require.NoError(t, err)
	require.Len(t, states, 1)
	require.True(t, proto.Equal(statesBefore[0].Last, states[0].Last))
	require.Equal(t, statesBefore[0].Streak, states[0].Streak)
	require.True(t, statesBefore[0].Since.Equal(states[0].Since))
	c, err := s.Counters("a1")
	require.NoError(t, err)
	require.Equal(t, store.AgentCounters{ResultsStored: 4, HighWater: 4}, c)
	// The high-water mark survives: a resend after restart is a duplicate.
	require.Equal(t, []store.CommitOutcome{{Duplicates: 4, AckedThrough: 4}},
		commit(t, s, store.ResultBatch{AgentID: "a1", Results: results("http", 1, 4)}))
	// The token's use count survived too.
	require.NoError(t, s.EnrollAgent("t", hash("s"), t0, store.Agent{ID: "a2", Name: "web-2"}))
	require.NoError(t, s.EnrollAgent("t", hash("s"), t0, store.Agent{ID: "a3", Name: "web-3"}))
	require.ErrorIs(t, s.EnrollAgent("t", hash("s"), t0, store.Agent{ID: "a4", Name: "web-4"}), store.ErrTokenUsedUp)
}

func TestConcurrentUse(t *testing.T) {
	s := testStore(t, Options{HistoryPerCheck: 20})
	const agents, batches = 8, 20
	for i := range agents {
		enroll(t, s, fmt.Sprintf("a%d", i), fmt.Sprintf("web-%d", i))
	}
	var wg sync.WaitGroup
	for i := range agents {
		id := fmt.Sprintf("a%d", i)
		wg.Go(func() {
			for b := range uint64(batches) {
				_, err := s.CommitResults([]store.ResultBatch{{AgentID: id, Results: results("http", b*5+1, b*5+5)}})
				require.NoError(t, err)
			}
		})
		wg.Go(func() {
			for range batches {
				_, err := s.ListCheckStates(id)
				require.NoError(t, err)
				_, err = s.ListResults(id, "http", 5)
				require.NoError(t, err)
				require.NoError(t, s.UpdateAgent(id, func(a *store.Agent) error { a.LastSeen = time.Now(); return nil }))
			}
		})
	}
	wg.Wait()
	for i := range agents {
		c, err := s.Counters(fmt.Sprintf("a%d", i))
		require.NoError(t, err)
		require.Equal(t, store.AgentCounters{ResultsStored: batches * 5, HighWater: batches * 5}, c)
	}
	require.NoError(t, s.Verify())
}
