package bolt

import (
	"crypto/sha256"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/types/known/timestamppb"

	"tend.dev/tend/controlplane/store"
	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// testStore opens a store in a temporary directory and closes it at the end
// of the test.
func testStore(t testing.TB, opts Options) *Store {
	t.Helper()
	return testStoreAt(t, filepath.Join(t.TempDir(), "tend.db"), opts)
}

func testStoreAt(t testing.TB, path string, opts Options) *Store {
	t.Helper()
	s, err := Open(path, opts)
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func hash(secret string) []byte {
	h := sha256.Sum256([]byte(secret))
	return h[:]
}

// enroll creates a one-use token and enrolls an agent with it.
func enroll(t testing.TB, s *Store, id, name string) store.Agent {
	t.Helper()
	tok := store.Token{ID: "tok-" + id, SecretHash: hash("s-" + id), CreatedAt: t0, ExpiresAt: t0.Add(time.Hour), Uses: 1}
	require.NoError(t, s.CreateToken(tok))
	a := store.Agent{ID: id, Name: name, Labels: map[string]string{"role": "web"}, Status: store.StatusDisconnected}
	require.NoError(t, s.EnrollAgent(tok.ID, hash("s-"+id), t0, a))
	got, err := s.GetAgent(id)
	require.NoError(t, err)
	return got
}

func result(seq uint64, check string, st agentv1.CheckStatus, at time.Time) *agentv1.CheckResult {
	return &agentv1.CheckResult{
		Seq: seq, CheckId: check, Status: st,
		Output:    fmt.Sprintf("run %d", seq),
		Metrics:   map[string]float64{"used_percent": float64(seq)},
		StartedAt: timestamppb.New(at),
	}
}

const (
	stOK   = agentv1.CheckStatus_CHECK_STATUS_OK
	stWarn = agentv1.CheckStatus_CHECK_STATUS_WARNING
	stCrit = agentv1.CheckStatus_CHECK_STATUS_CRITICAL
)

// results makes results seq from..to of one check, all ok, one second apart.
func results(check string, from, to uint64) []*agentv1.CheckResult {
	var rs []*agentv1.CheckResult
	for seq := from; seq <= to; seq++ {
		rs = append(rs, result(seq, check, stOK, t0.Add(time.Duration(seq)*time.Second)))
	}
	return rs
}

func seqs(rs []*agentv1.CheckResult) []uint64 {
	out := make([]uint64, len(rs))
	for i, r := range rs {
		out[i] = r.GetSeq()
	}
	return out
}

func commit(t testing.TB, s *Store, batches ...store.ResultBatch) []store.CommitOutcome {
	t.Helper()
	outs, err := s.CommitResults(batches)
	require.NoError(t, err)
	require.Len(t, outs, len(batches))
	return outs
}
