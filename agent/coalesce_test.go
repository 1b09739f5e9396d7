package agent

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

type fakeOutbox struct {
	mu     sync.Mutex
	seq    uint64
	groups [][]string // check ids of each append call
	after  [][]string
	lost   []string
	bad    string // a check id whose results fail to append
}

func (f *fakeOutbox) append(rs ...*agentv1.CheckResult) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	var ids []string
	for _, r := range rs {
		if r.GetCheckId() == f.bad {
			return errors.New("cannot marshal")
		}
		ids = append(ids, r.GetCheckId())
	}
	for _, r := range rs {
		f.seq++
		r.Seq = f.seq
	}
	f.groups = append(f.groups, ids)
	return nil
}

func (f *fakeOutbox) handed(rs []*agentv1.CheckResult) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var ids []string
	for _, r := range rs {
		if r.GetSeq() == 0 {
			panic("handed on before it was appended")
		}
		ids = append(ids, r.GetCheckId())
	}
	f.after = append(f.after, ids)
}

func (f *fakeOutbox) failed(rs []*agentv1.CheckResult, _ error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, r := range rs {
		f.lost = append(f.lost, r.GetCheckId())
	}
}

func (f *fakeOutbox) snapshot() ([][]string, [][]string, []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([][]string(nil), f.groups...), append([][]string(nil), f.after...), append([]string(nil), f.lost...)
}

const (
	okSt   = agentv1.CheckStatus_CHECK_STATUS_OK
	critSt = agentv1.CheckStatus_CHECK_STATUS_CRITICAL
	warnSt = agentv1.CheckStatus_CHECK_STATUS_WARNING
)

func res(id string, st agentv1.CheckStatus) *agentv1.CheckResult {
	return &agentv1.CheckResult{CheckId: id, Status: st}
}

// TestCoalescerGroupsPassingResults: with a linger that never expires in
// the test, which results wait and which flush, by their status history.
func TestCoalescerGroupsPassingResults(t *testing.T) {
	type add struct {
		id string
		st agentv1.CheckStatus
	}
	tests := []struct {
		name  string
		adds  []add
		want  [][]string // append calls before Close
		close [][]string // append calls made by Close
	}{
		{"first result of a check goes at once", []add{{"a", okSt}}, [][]string{{"a"}}, nil},
		{"unchanged OK results wait", []add{{"a", okSt}, {"b", okSt}, {"a", okSt}, {"b", okSt}},
			[][]string{{"a"}, {"b"}}, [][]string{{"a", "b"}}},
		{"a failure takes the waiting ones along, in order", []add{{"a", okSt}, {"b", okSt}, {"a", okSt}, {"b", okSt}, {"c", critSt}},
			[][]string{{"a"}, {"b"}, {"a", "b", "c"}}, nil},
		{"failure then failure: both at once", []add{{"a", critSt}, {"a", critSt}}, [][]string{{"a"}, {"a"}}, nil},
		{"recovery (status change to OK) goes at once", []add{{"a", critSt}, {"a", okSt}}, [][]string{{"a"}, {"a"}}, nil},
		{"a warning goes at once", []add{{"a", okSt}, {"b", okSt}, {"b", okSt}, {"a", warnSt}}, [][]string{{"a"}, {"b"}, {"b", "a"}}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := &fakeOutbox{}
			c := newCoalescer(time.Hour, f.append, f.handed, f.failed)
			var all []*agentv1.CheckResult
			for _, a := range tt.adds {
				r := res(a.id, a.st)
				all = append(all, r)
				c.Add(r)
			}
			groups, after, _ := f.snapshot()
			require.Equal(t, tt.want, groups)
			require.Equal(t, groups, after, "every durable group is handed on, in order")
			c.Close()
			groups, _, lost := f.snapshot()
			require.Equal(t, append(tt.want, tt.close...), groups)
			require.Empty(t, lost)
			for i, r := range all {
				require.Equal(t, uint64(i+1), r.GetSeq(), "results are appended in the order they came")
			}
		})
	}
}

func TestCoalescerLingerExpires(t *testing.T) {
	f := &fakeOutbox{}
	c := newCoalescer(20*time.Millisecond, f.append, f.handed, f.failed)
	c.Add(res("a", okSt))
	c.Add(res("b", okSt))
	c.Add(res("a", okSt))
	c.Add(res("b", okSt))
	require.Eventually(t, func() bool {
		g, _, _ := f.snapshot()
		return len(g) == 3
	}, 10*time.Second, 5*time.Millisecond)
	g, after, _ := f.snapshot()
	require.Equal(t, [][]string{{"a"}, {"b"}, {"a", "b"}}, g)
	require.Equal(t, g, after)
	c.Close()
	g, _, _ = f.snapshot()
	require.Len(t, g, 3, "nothing left for Close")
}

func TestCoalescerFullGroupDoesNotWait(t *testing.T) {
	f := &fakeOutbox{}
	c := newCoalescer(time.Hour, f.append, f.handed, f.failed)
	c.max = 3
	c.Add(res("a", okSt)) // new: at once
	c.Add(res("a", okSt))
	c.Add(res("a", okSt))
	c.Add(res("a", okSt)) // third waiting: full
	g, _, _ := f.snapshot()
	require.Equal(t, [][]string{{"a"}, {"a", "a", "a"}}, g)
}

func TestCoalescerBadResultLosesOnlyItself(t *testing.T) {
	f := &fakeOutbox{bad: "bad"}
	c := newCoalescer(time.Hour, f.append, f.handed, f.failed)
	c.Add(res("a", okSt))
	c.Add(res("a", okSt))
	c.Add(res("bad", critSt))
	g, after, lost := f.snapshot()
	require.Equal(t, [][]string{{"a"}, {"a"}}, g)
	require.Equal(t, g, after)
	require.Equal(t, []string{"bad"}, lost)
}

func TestCoalescerAfterCloseAppendsAtOnce(t *testing.T) {
	f := &fakeOutbox{}
	c := newCoalescer(time.Hour, f.append, f.handed, f.failed)
	c.Add(res("a", okSt))
	c.Close()
	c.Add(res("a", okSt))
	g, _, _ := f.snapshot()
	require.Equal(t, [][]string{{"a"}, {"a"}}, g)
}
