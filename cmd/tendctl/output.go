package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"
	"sigs.k8s.io/yaml"

	"tend.dev/tend/internal/policy"
	adminv1 "tend.dev/tend/proto/tend/admin/v1"
	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

// The objects `get -o json|yaml` prints. Their JSON field names are a
// contract (docs/DESIGN.md, "Admin API resources"): scripts depend on them.
// Unexported fields only feed the table.

// agentObject is one agent.
type agentObject struct {
	Name     string            `json:"name"`
	ID       string            `json:"id"`
	Labels   map[string]string `json:"labels"`
	Status   string            `json:"status"` // connected | disconnected | down
	LastSeen *time.Time        `json:"lastSeen"`
	Version  string            `json:"version"`
}

// policyObject is one stored policy; Spec is its canonical JSON.
type policyObject struct {
	Name    string          `json:"name"`
	Version uint64          `json:"version"`
	Spec    json.RawMessage `json:"spec"`

	updated time.Time
}

// checkObject is the latest state of one (agent, check).
type checkObject struct {
	Agent   string              `json:"agent"`
	Check   string              `json:"check"`
	Status  string              `json:"status"` // ok | warning | critical | unknown
	Output  string              `json:"output"`
	LastRun *time.Time          `json:"lastRun"`
	Since   *time.Time          `json:"since"`
	Metrics map[string]*float64 `json:"metrics"`
}

// resultObject is one stored result of a check (`get results`).
type resultObject struct {
	Agent         string              `json:"agent"`
	Check         string              `json:"check"`
	Seq           uint64              `json:"seq"`
	PolicyVersion uint64              `json:"policyVersion"`
	Status        string              `json:"status"`
	Output        string              `json:"output"`
	StartedAt     *time.Time          `json:"startedAt"`
	Duration      string              `json:"duration"`
	Metrics       map[string]*float64 `json:"metrics"`
}

func agentStatus(s adminv1.AgentStatus) string {
	switch s {
	case adminv1.AgentStatus_AGENT_STATUS_CONNECTED:
		return "connected"
	case adminv1.AgentStatus_AGENT_STATUS_DISCONNECTED:
		return "disconnected"
	case adminv1.AgentStatus_AGENT_STATUS_DOWN:
		return "down"
	}
	return "unknown"
}

func checkStatus(s agentv1.CheckStatus) string {
	switch s {
	case agentv1.CheckStatus_CHECK_STATUS_OK:
		return "ok"
	case agentv1.CheckStatus_CHECK_STATUS_WARNING:
		return "warning"
	case agentv1.CheckStatus_CHECK_STATUS_CRITICAL:
		return "critical"
	}
	return "unknown"
}

// timePtr returns nil for an unset timestamp, so JSON shows null.
func timePtr(ts *timestamppb.Timestamp) *time.Time {
	if ts == nil {
		return nil
	}
	t := ts.AsTime()
	return &t
}

// metrics copies metrics, with null for values JSON cannot hold (NaN, ±Inf).
func metrics(m map[string]float64) map[string]*float64 {
	out := make(map[string]*float64, len(m))
	for k, v := range m {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			out[k] = nil
			continue
		}
		out[k] = &v
	}
	return out
}

func toAgentObject(a *adminv1.Agent) agentObject {
	labels := a.GetLabels()
	if labels == nil {
		labels = map[string]string{}
	}
	return agentObject{
		Name:     a.GetName(),
		ID:       a.GetId(),
		Labels:   labels,
		Status:   agentStatus(a.GetStatus()),
		LastSeen: timePtr(a.GetLastSeen()),
		Version:  a.GetVersion(),
	}
}

func toPolicyObject(p *adminv1.Policy) (policyObject, error) {
	spec := p.GetSpecJson()
	if !json.Valid(spec) {
		return policyObject{}, fmt.Errorf("policy %s: the control plane sent a spec that is not JSON", p.GetName())
	}
	o := policyObject{Name: p.GetName(), Version: p.GetVersion(), Spec: json.RawMessage(spec)}
	if p.GetUpdatedAt() != nil {
		o.updated = p.GetUpdatedAt().AsTime()
	}
	return o, nil
}

func toCheckObject(c *adminv1.CheckState) checkObject {
	agent := c.GetAgentName()
	if agent == "" {
		agent = c.GetAgentId()
	}
	last := c.GetLast()
	return checkObject{
		Agent:   agent,
		Check:   c.GetCheckId(),
		Status:  checkStatus(last.GetStatus()),
		Output:  last.GetOutput(),
		LastRun: timePtr(last.GetStartedAt()),
		Since:   timePtr(c.GetSince()),
		Metrics: metrics(last.GetMetrics()),
	}
}

func toResultObject(agent string, r *agentv1.CheckResult) resultObject {
	o := resultObject{
		Agent:         agent,
		Check:         r.GetCheckId(),
		Seq:           r.GetSeq(),
		PolicyVersion: r.GetPolicyVersion(),
		Status:        checkStatus(r.GetStatus()),
		Output:        r.GetOutput(),
		StartedAt:     timePtr(r.GetStartedAt()),
		Metrics:       metrics(r.GetMetrics()),
	}
	if r.GetDuration() != nil {
		o.Duration = r.GetDuration().AsDuration().String()
	}
	return o
}

// Output formats.
const (
	formatTable = "table"
	formatJSON  = "json"
	formatYAML  = "yaml"
)

func checkFormat(f string) error {
	switch f {
	case formatTable, formatJSON, formatYAML:
		return nil
	}
	return fmt.Errorf("unknown output format %q (want table, json or yaml)", f)
}

// printer writes lists of objects as a table, a JSON array or YAML.
type printer struct {
	out, errOut io.Writer
	format      string
	now         time.Time
}

// print writes objs; table renders the table rows (header included).
func printList[T any](p printer, objs []T, table func(w io.Writer, now time.Time, objs []T)) error {
	if objs == nil {
		objs = []T{} // "[]", never "null"
	}
	switch p.format {
	case formatJSON:
		b, err := json.MarshalIndent(objs, "", "  ")
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(p.out, "%s\n", b)
		return err
	case formatYAML:
		b, err := yaml.Marshal(objs)
		if err != nil {
			return err
		}
		_, err = p.out.Write(b)
		return err
	}
	if len(objs) == 0 {
		fmt.Fprintln(p.errOut, "No resources found.")
		return nil
	}
	tw := tabwriter.NewWriter(p.out, 0, 8, 3, ' ', 0)
	table(tw, p.now, objs)
	return tw.Flush()
}

// printObject writes one object as JSON or YAML (commands that act on one
// resource: approve, rearm, credential create, keys ...).
func printObject(w io.Writer, format string, obj any) error {
	var b []byte
	var err error
	if format == formatYAML {
		b, err = yaml.Marshal(obj)
	} else {
		b, err = json.MarshalIndent(obj, "", "  ")
		b = append(b, '\n')
	}
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

func agentTable(w io.Writer, now time.Time, objs []agentObject) {
	fmt.Fprintln(w, "NAME\tSTATUS\tLAST SEEN\tLABELS\tVERSION\tID")
	for _, o := range objs {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", o.Name, o.Status, ago(now, o.LastSeen), labelString(o.Labels), dash(o.Version), o.ID)
	}
}

func policyTable(w io.Writer, now time.Time, objs []policyObject) {
	fmt.Fprintln(w, "NAME\tVERSION\tMODE\tCHECK\tSELECTOR\tACTION\tUPDATED")
	for _, o := range objs {
		mode, check, selector, action := "?", "?", "?", "?"
		if p, err := policy.FromSpecJSON(o.Name, o.Version, o.Spec); err == nil {
			s := p.Spec
			mode, check, selector, action = s.Mode, s.Check.Type+" every "+s.Check.Interval.String(), labelString(s.Selector.MatchLabels), "<none>"
			if s.Remediation != nil {
				action = s.Remediation.Action
			}
		}
		updated := "-"
		if !o.updated.IsZero() {
			updated = ago(now, &o.updated)
		}
		fmt.Fprintf(w, "%s\t%d\t%s\t%s\t%s\t%s\t%s\n", o.Name, o.Version, mode, check, selector, action, updated)
	}
}

func checkTable(w io.Writer, now time.Time, objs []checkObject) {
	fmt.Fprintln(w, "AGENT\tCHECK\tSTATUS\tSINCE\tLAST RUN\tOUTPUT")
	for _, o := range objs {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", o.Agent, o.Check, o.Status, ago(now, o.Since), ago(now, o.LastRun), dash(firstLine(o.Output, 60)))
	}
}

func resultTable(w io.Writer, now time.Time, objs []resultObject) {
	fmt.Fprintln(w, "SEQ\tSTATUS\tSTARTED\tDURATION\tOUTPUT")
	for _, o := range objs {
		fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%s\n", o.Seq, o.Status, ago(now, o.StartedAt), dash(o.Duration), dash(firstLine(o.Output, 60)))
	}
}

// ago is a human age: "12s ago", "3m12s ago", "5h ago", "3d ago"; "never"
// for an unknown time.
func ago(now time.Time, t *time.Time) string {
	if t == nil || t.IsZero() {
		return "never"
	}
	return humanDuration(now.Sub(*t)) + " ago"
}

func humanDuration(d time.Duration) string {
	if d < 0 {
		d = 0 // clock skew between tendctl and the control plane
	}
	s := int64(d / time.Second)
	switch {
	case s < 60:
		return fmt.Sprintf("%ds", s)
	case s < 10*60:
		if s%60 == 0 {
			return fmt.Sprintf("%dm", s/60)
		}
		return fmt.Sprintf("%dm%ds", s/60, s%60)
	case s < 3600:
		return fmt.Sprintf("%dm", s/60)
	case s < 10*3600:
		if m := (s % 3600) / 60; m != 0 {
			return fmt.Sprintf("%dh%dm", s/3600, m)
		}
		return fmt.Sprintf("%dh", s/3600)
	case s < 48*3600:
		return fmt.Sprintf("%dh", s/3600)
	}
	return fmt.Sprintf("%dd", s/86400)
}

// labelString is "k=v,k=v" sorted by key, or "<none>".
func labelString(m map[string]string) string {
	if len(m) == 0 {
		return "<none>"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + m[k]
	}
	return strings.Join(parts, ",")
}

// firstLine is the first line of s, cut at max runes with "…".
func firstLine(s string, max int) string {
	s, _, cut := strings.Cut(strings.TrimSpace(s), "\n")
	s = strings.ReplaceAll(s, "\t", " ")
	r := []rune(s)
	if len(r) > max {
		return string(r[:max-1]) + "…"
	}
	if cut {
		return s + " …"
	}
	return s
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
