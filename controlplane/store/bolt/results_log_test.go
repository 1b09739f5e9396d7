package bolt

import (
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"

	"tend.dev/tend/controlplane/store"
	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

// bucketLen counts the keys of a bucket.
func bucketLen(t *testing.T, s *Store, b bucket) int {
	t.Helper()
	var n int
	require.NoError(t, s.view(func(tx txn) error {
		n = tx.bucket(b).Stats().KeyN
		return nil
	}))
	return n
}

// TestHistoryAcrossLogTrim: a fast and a slow check, with the log trimmed
// to exactly HistoryPerCheck entries per check: the fast check's old
// entries are dropped from the log head, the slow check's live ones move
// to the cold history, and both histories stay exactly the last N.
func TestHistoryAcrossLogTrim(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tend.db")
	s, err := Open(path, Options{HistoryPerCheck: 3, CheckpointInterval: time.Nanosecond})
	require.NoError(t, err)
	s.res.logSlack = 0
	enroll(t, s, "a1", "web-1")

	var seq uint64
	want := map[string][]uint64{}
	for i := range 60 {
		var rs []*agentv1.CheckResult
		for range 4 {
			seq++
			rs = append(rs, result(seq, "fast", stOK, t0.Add(time.Duration(seq)*time.Second)))
			want["fast"] = append(want["fast"], seq)
		}
		if i%7 == 0 {
			seq++
			rs = append(rs, result(seq, "slow", stCrit, t0.Add(time.Duration(seq)*time.Second)))
			want["slow"] = append(want["slow"], seq)
		}
		commit(t, s, store.ResultBatch{AgentID: "a1", Results: rs})
		for check, seqs := range want {
			if len(seqs) > 3 {
				want[check] = seqs[len(seqs)-3:]
			}
		}
		for _, check := range []string{"fast", "slow"} {
			got, err := s.ListResults("a1", check, 0)
			require.NoError(t, err)
			require.Equal(t, want[check], seqs(got), "round %d, check %s", i, check)
		}
		require.NoError(t, s.Verify(), "round %d", i)
	}
	// Trimmed: the log holds little more than N per check (the trim keeps
	// up, a commit behind at most); the slow check's live results are
	// cold, the fast check never went there.
	require.Less(t, bucketLen(t, s, bucketResultsLog), 3*2+2*5+64)
	require.NotZero(t, bucketLen(t, s, bucketHistoryCold))
	require.LessOrEqual(t, bucketLen(t, s, bucketHistoryCold), 3)
	states, err := s.ListCheckStates("a1")
	require.NoError(t, err)
	require.Len(t, states, 2)
	for _, st := range states {
		require.Equal(t, uint64(3), st.HistoryLen)
		require.Equal(t, want[st.CheckID][2], st.Last.GetSeq())
	}
	require.NoError(t, s.Close())

	s = testStoreAt(t, path, Options{HistoryPerCheck: 3})
	require.NoError(t, s.Verify())
	for check, w := range want {
		got, err := s.ListResults("a1", check, 2)
		require.NoError(t, err)
		require.Equal(t, w[1:], seqs(got))
	}
}

// copyFile copies a store file while it is open: what a crash leaves
// behind after the last commit (every commit is synced).
func copyFile(t *testing.T, from string) string {
	t.Helper()
	to := filepath.Join(t.TempDir(), "crashed.db")
	in, err := os.Open(from)
	require.NoError(t, err)
	defer in.Close()
	out, err := os.Create(to)
	require.NoError(t, err)
	_, err = io.Copy(out, in)
	require.NoError(t, err)
	require.NoError(t, out.Close())
	return to
}

// TestCrashReplaysTheLog: check states not yet checkpointed are rebuilt
// from the log at Open, exactly as they were.
func TestCrashReplaysTheLog(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tend.db")
	s := testStoreAt(t, path, Options{HistoryPerCheck: 4, CheckpointInterval: time.Hour})
	enroll(t, s, "a1", "web-1")
	enroll(t, s, "a2", "web-2")
	at := func(sec int) time.Time { return t0.Add(time.Duration(sec) * time.Second) }
	commit(t, s, store.ResultBatch{AgentID: "a1", Results: results("http", 1, 6)})
	// Checkpoint everything once (as Close does), then change more.
	require.NoError(t, s.flushResults())
	commit(t, s,
		store.ResultBatch{AgentID: "a1", Results: []*agentv1.CheckResult{
			result(7, "http", stCrit, at(7)), result(8, "http", stCrit, at(8)), result(9, "disk", stWarn, at(9)),
		}},
		store.ResultBatch{AgentID: "a2", Results: results("http", 1, 2)},
	)
	before, err := s.ListCheckStates("")
	require.NoError(t, err)
	histBefore, err := s.ListResults("a1", "http", 0)
	require.NoError(t, err)
	require.Equal(t, []uint64{5, 6, 7, 8}, seqs(histBefore))

	crashed := testStoreAt(t, copyFile(t, path), Options{HistoryPerCheck: 4})
	require.NoError(t, crashed.Verify())
	after, err := crashed.ListCheckStates("")
	require.NoError(t, err)
	require.Len(t, after, len(before))
	for i := range before {
		require.Equal(t, before[i].AgentID+"/"+before[i].CheckID, after[i].AgentID+"/"+after[i].CheckID)
		require.True(t, proto.Equal(before[i].Last, after[i].Last), "%s", before[i].CheckID)
		require.True(t, before[i].Since.Equal(after[i].Since))
		require.Equal(t, before[i].Streak, after[i].Streak)
		require.Equal(t, before[i].HistoryLen, after[i].HistoryLen)
	}
	got, err := crashed.ListResults("a1", "http", 0)
	require.NoError(t, err)
	require.Equal(t, seqs(histBefore), seqs(got))
	// It goes on from there: new results chain to the replayed ones.
	commit(t, crashed, store.ResultBatch{AgentID: "a1", Results: []*agentv1.CheckResult{result(10, "http", stCrit, at(10))}})
	got, err = crashed.ListResults("a1", "http", 0)
	require.NoError(t, err)
	require.Equal(t, []uint64{6, 7, 8, 10}, seqs(got))
	states, err := crashed.ListCheckStates("a1")
	require.NoError(t, err)
	require.Equal(t, uint64(3), states[1].Streak)
	require.True(t, at(7).Equal(states[1].Since))
	require.NoError(t, crashed.Verify())
}

// TestVerifyCatchesABrokenHistory: a missing entry of a check's history is
// reported.
func TestVerifyCatchesABrokenHistory(t *testing.T) {
	s := testStore(t, Options{})
	enroll(t, s, "a1", "web-1")
	commit(t, s, store.ResultBatch{AgentID: "a1", Results: results("http", 1, 3)})
	require.NoError(t, s.Verify())
	require.NoError(t, s.db.Update(func(tx *bbolt.Tx) error {
		c := tx.Bucket(bucketResultsLog.name).Cursor()
		k, _ := c.First()
		require.Equal(t, uint64(1), binary.BigEndian.Uint64(k))
		return c.Delete()
	}))
	require.ErrorContains(t, s.Verify(), "state says 3 results in history, found 2")
	_, err := s.ListResults("a1", "http", 0)
	require.ErrorContains(t, err, "list results of a1/http: check a1/http: history entry 1 missing")
}

// TestUpgradeFromSchema1: a schema-1 file (history keyed by check and seq,
// check states with the latest result) opens as schema 2 with the same
// histories and states, and goes on from there.
func TestUpgradeFromSchema1(t *testing.T) {
	at := func(sec int) time.Time { return t0.Add(time.Duration(sec) * time.Second) }
	type check struct {
		agent, check string
		seqs         []uint64
		status       agentv1.CheckStatus
		since        int
		streak       uint64
	}
	checks := []check{
		{"a1", "http", []uint64{3, 4, 6}, stCrit, 4, 2},
		{"a1", "disk", []uint64{5}, stOK, 5, 1},
		{"a2", "http", []uint64{1, 2, 3, 4}, stOK, 1, 9},
	}
	path := rawDB(t, func(tx *bbolt.Tx) error {
		for _, name := range []string{"meta", "agents", "agent_names", "tokens", "policies", "policy_versions", "check_state", "history", "agent_counters"} {
			_, err := tx.CreateBucket([]byte(name))
			require.NoError(t, err)
		}
		require.NoError(t, tx.Bucket(bucketMeta.name).Put(keySchemaVersion, u64(1)))
		for _, id := range []string{"a1", "a2"} {
			require.NoError(t, tx.Bucket(bucketAgents.name).Put([]byte(id), fmt.Appendf(nil, `{"id":%q,"name":"web-%s"}`, id, id)))
			require.NoError(t, tx.Bucket(bucketAgentCounters.name).Put([]byte(id), counterRecord{stored: 9, highWater: 6}.encode()))
		}
		for _, c := range checks {
			ck := checkKey(c.agent, c.check)
			var raw []byte
			for _, seq := range c.seqs {
				var err error
				raw, err = proto.Marshal(result(seq, c.check, c.status, at(int(seq))))
				require.NoError(t, err)
				require.NoError(t, tx.Bucket(bucketHistory.name).Put(historyKey(historyPrefix(ck), seq), raw))
			}
			h := stateHeader{status: int32(c.status), sinceNanos: at(c.since).UnixNano(), streak: c.streak, historyLen: uint64(len(c.seqs))}
			require.NoError(t, tx.Bucket(bucketCheckState.name).Put(ck, h.encode(raw)))
		}
		return nil
	})

	s := testStoreAt(t, path, Options{HistoryPerCheck: 3})
	v, err := s.SchemaVersion()
	require.NoError(t, err)
	require.Equal(t, uint64(2), v)
	require.NoError(t, s.Verify())
	require.NoError(t, s.db.View(func(tx *bbolt.Tx) error {
		require.Nil(t, tx.Bucket(bucketHistory.name))
		return nil
	}))
	states, err := s.ListCheckStates("")
	require.NoError(t, err)
	require.Len(t, states, 3)
	byKey := map[string]store.CheckState{}
	for _, st := range states {
		byKey[st.AgentID+"/"+st.CheckID] = st
	}
	for _, c := range checks {
		st := byKey[c.agent+"/"+c.check]
		require.Equal(t, c.seqs[len(c.seqs)-1], st.Last.GetSeq())
		require.Equal(t, c.status, st.Last.GetStatus())
		require.True(t, at(c.since).Equal(st.Since))
		require.Equal(t, c.streak, st.Streak)
		require.Equal(t, uint64(len(c.seqs)), st.HistoryLen, "the history as it was, even above HistoryPerCheck")
		got, err := s.ListResults(c.agent, c.check, 0)
		require.NoError(t, err)
		require.Equal(t, c.seqs, seqs(got))
	}

	// New results join the migrated histories, bounded again.
	commit(t, s, store.ResultBatch{AgentID: "a2", Results: []*agentv1.CheckResult{result(7, "http", stOK, at(7))}})
	got, err := s.ListResults("a2", "http", 0)
	require.NoError(t, err)
	require.Equal(t, []uint64{3, 4, 7}, seqs(got))
	c, err := s.Counters("a2")
	require.NoError(t, err)
	require.Equal(t, store.AgentCounters{ResultsStored: 10, HighWater: 7}, c)
	states, err = s.ListCheckStates("a2")
	require.NoError(t, err)
	require.Equal(t, uint64(10), states[0].Streak)
	require.NoError(t, s.Verify())
	require.NoError(t, s.Close())

	s = testStoreAt(t, path, Options{HistoryPerCheck: 3})
	require.NoError(t, s.Verify())
	got, err = s.ListResults("a1", "http", 0)
	require.NoError(t, err)
	require.Equal(t, []uint64{3, 4, 6}, seqs(got))
}

// TestCommitPreEncodedResults: results encoded by the caller
// (store.EncodeResults) are stored as they are; a batch it cannot encode
// is left to the store, which refuses it as before.
func TestCommitPreEncodedResults(t *testing.T) {
	s := testStore(t, Options{})
	enroll(t, s, "a1", "web-1")
	b := store.ResultBatch{AgentID: "a1", Results: results("http", 1, 3)}
	store.EncodeResults(&b)
	require.Len(t, b.Encoded, 3)
	require.Equal(t, []store.CommitOutcome{{Stored: 3, AckedThrough: 3}}, commit(t, s, b))
	got, err := s.ListResults("a1", "http", 0)
	require.NoError(t, err)
	for i, r := range got {
		require.True(t, proto.Equal(b.Results[i], r))
	}

	bad := store.ResultBatch{AgentID: "a1", Results: []*agentv1.CheckResult{result(4, "http", stOK, t0), nil}}
	store.EncodeResults(&bad)
	require.Nil(t, bad.Encoded)
	outs := commit(t, s, bad)
	require.ErrorContains(t, outs[0].Err, "agent a1: result 1 is nil")
	require.NoError(t, s.Verify())
}
