package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	yamlv3 "go.yaml.in/yaml/v3"
	"sigs.k8s.io/yaml"

	"tend.dev/tend/internal/policy"
	adminv1 "tend.dev/tend/proto/tend/admin/v1"
)

func newDescribeCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "describe (policy|agent|incident) NAME",
		Short: "Show one policy (spec, matched agents, safety rails), agent (details and checks) or incident (the whole timeline)",
		Long: `Show one resource in detail.

describe policy NAME: version, matched agents, the state of its safety rails
(circuit breaker, correlated-failure hold, tasks running and started in the
last hour), its spec and, for a shadow policy, what it would have done
(newest first). describe agent NAME: details and the latest result of each
check. describe incident ID: the whole timeline and the tasks.`,
		Example: `  tendctl describe policy web-nginx-down
  tendctl describe agent web-1
  tendctl describe incident inc-3f2a9c1d0b7e4a55`,
		RunE: func(cmd *cobra.Command, args []string) error {
			res, names, err := parseResource(cmd, args, resPolicies, resAgents, resIncidents)
			if err != nil {
				return err
			}
			if len(names) != 1 {
				return usageErrorf(cmd, "describe takes exactly one NAME, got %d", len(names))
			}
			if res == resIncidents {
				resp, err := call(cmd.Context(), a, adminv1.AdminServiceClient.GetIncident, &adminv1.GetIncidentRequest{Id: names[0]})
				if err != nil {
					return err
				}
				return describeIncident(a.stdout, a.now(), resp)
			}
			if res == resPolicies {
				resp, err := call(cmd.Context(), a, adminv1.AdminServiceClient.GetPolicy, &adminv1.GetPolicyRequest{Name: names[0]})
				if err != nil {
					return err
				}
				return describePolicy(a.stdout, a.now(), resp)
			}
			agents, err := call(cmd.Context(), a, adminv1.AdminServiceClient.ListAgents, &adminv1.ListAgentsRequest{})
			if err != nil {
				return err
			}
			var ag *adminv1.Agent
			for _, x := range agents.GetAgents() {
				if x.GetName() == names[0] || x.GetId() == names[0] {
					ag = x
					break
				}
			}
			if ag == nil {
				return fmt.Errorf("agent %q not found (tendctl get agents lists them)", names[0])
			}
			checks, err := call(cmd.Context(), a, adminv1.AdminServiceClient.ListChecks, &adminv1.ListChecksRequest{Agent: ag.GetId()})
			if err != nil {
				return err
			}
			return describeAgent(a.stdout, a.now(), ag, checks.GetChecks())
		},
	}
}

// describePolicy prints a policy: name, version, matched agents and the
// spec as YAML, fields in the order of the example policy.
func describePolicy(w io.Writer, now time.Time, resp *adminv1.GetPolicyResponse) error {
	p := resp.GetPolicy()
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintf(tw, "Name:\t%s\n", p.GetName())
	fmt.Fprintf(tw, "Version:\t%d\n", p.GetVersion())
	if p.GetUpdatedAt() != nil {
		t := p.GetUpdatedAt().AsTime()
		fmt.Fprintf(tw, "Updated:\t%s (%s)\n", t.Local().Format(time.RFC3339), ago(now, &t))
	}
	matched := append([]string(nil), resp.GetMatchedAgents()...)
	sort.Strings(matched)
	if len(matched) == 0 {
		fmt.Fprintf(tw, "Matched agents:\t<none>\n")
	} else {
		fmt.Fprintf(tw, "Matched agents:\t%d: %s\n", len(matched), strings.Join(matched, ", "))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	pol, _ := policy.FromSpecJSON(p.GetName(), p.GetVersion(), p.GetSpecJson()) // nil: a spec this tendctl does not know
	if err := describeSafety(w, now, p.GetName(), pol, resp.GetStatus()); err != nil {
		return err
	}
	spec, err := specYAML(p)
	if err != nil {
		return err
	}
	fmt.Fprintln(w, "Spec:")
	for _, line := range strings.Split(strings.TrimRight(string(spec), "\n"), "\n") {
		fmt.Fprintln(w, "  "+line)
	}
	if st := resp.GetStatus(); len(st.GetWouldHaveActed()) > 0 || (pol != nil && pol.Spec.Mode == policy.ModeShadow) {
		return describeShadow(w, now, toPolicyStatusObject(st).WouldHaveActed)
	}
	return nil
}

// describeSafety prints the state of a policy's safety rails: circuit
// breaker, correlated-failure hold, tasks in flight and started in the
// last hour. pol (for the configured limits) may be nil.
func describeSafety(w io.Writer, now time.Time, name string, pol *policy.Policy, status *adminv1.PolicyStatus) error {
	fmt.Fprintln(w, "Safety:")
	if status == nil {
		fmt.Fprintln(w, "  <not reported: the control plane sent no status (is its remediation loop running?)>")
		return nil
	}
	st := toPolicyStatusObject(status)
	var limits *policy.Limits
	if pol != nil {
		limits = pol.Spec.Limits
	}
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)

	// Circuit breaker.
	window := ""
	threshold := 0
	if limits != nil && limits.Breaker != nil {
		threshold = limits.Breaker.Failures
		window = " in the last " + limits.Breaker.Window.String()
	}
	counted := fmt.Sprintf("%d failed attempt%s counted%s", st.BreakerFailures, plural(int(st.BreakerFailures)), window)
	switch {
	case st.BreakerOpen:
		since := ""
		if st.BreakerOpenedAt != nil {
			since = " since " + st.BreakerOpenedAt.Local().Format(time.RFC3339) + " (" + ago(now, st.BreakerOpenedAt) + ")"
		}
		fmt.Fprintf(tw, "  Circuit breaker:\tOPEN%s: %s\n", since, dash(st.BreakerReason))
		fmt.Fprintf(tw, "  \t%s; the policy escalates instead of acting until: tendctl rearm policy %s\n", counted, name)
	case limits != nil && limits.Breaker != nil && threshold == 0:
		fmt.Fprintf(tw, "  Circuit breaker:\toff (spec.limits.breaker.failures: 0)\n")
	case threshold > 0:
		fmt.Fprintf(tw, "  Circuit breaker:\tclosed: %s (opens at %d)\n", counted, threshold)
	default:
		fmt.Fprintf(tw, "  Circuit breaker:\tclosed: %s\n", counted)
	}

	// Correlated-failure hold.
	switch {
	case st.Correlated:
		fi := ""
		if st.FleetIncident != "" {
			fi = "; fleet incident " + st.FleetIncident
		}
		fmt.Fprintf(tw, "  Correlated hold:\tHELD: %s%s\n", dash(st.CorrelatedReason), fi)
		fmt.Fprintf(tw, "  \tno task is sent to any of its agents until few enough fail, or: tendctl rearm policy %s\n", name)
	case limits != nil && limits.Correlation != nil && limits.Correlation.Percent == 0:
		fmt.Fprintf(tw, "  Correlated hold:\toff (spec.limits.correlation.percent: 0)\n")
	default:
		fmt.Fprintf(tw, "  Correlated hold:\tnone\n")
	}

	// Budgets.
	running := fmt.Sprintf("%d running", st.Running)
	if limits != nil && limits.MaxConcurrent != "" {
		running += " (max " + string(limits.MaxConcurrent) + ")"
	}
	hour := fmt.Sprintf("%d started in the last hour", st.StartedLastHour)
	if limits != nil && limits.MaxPerHour > 0 {
		hour += fmt.Sprintf(" (max %d)", limits.MaxPerHour)
	}
	fmt.Fprintf(tw, "  Tasks:\t%s, %s\n", running, hour)
	return tw.Flush()
}

// describeShadow prints what a shadow policy would have done, newest
// first.
func describeShadow(w io.Writer, now time.Time, ds []shadowDecision) error {
	fmt.Fprintln(w, "Would have acted (shadow):")
	if len(ds) == 0 {
		fmt.Fprintln(w, "  none")
		return nil
	}
	ds = append([]shadowDecision(nil), ds...)
	sort.SliceStable(ds, func(i, j int) bool {
		if ds[i].At == nil || ds[j].At == nil {
			return ds[j].At == nil && ds[i].At != nil
		}
		return ds[i].At.After(*ds[j].At)
	})
	tw := tabwriter.NewWriter(w, 0, 8, 3, ' ', 0)
	fmt.Fprintln(tw, "  WHEN\tAGENT\tACTION\tPARAMS\tINCIDENT")
	for _, d := range ds {
		params := "-"
		if len(d.Params) > 0 && string(d.Params) != "null" {
			params = firstLine(compactJSON(d.Params), 60)
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\n", ago(now, d.At), dash(d.Agent), dash(d.Action), params, dash(d.Incident))
	}
	return tw.Flush()
}

// compactJSON is JSON on one line.
func compactJSON(b []byte) string {
	var buf bytes.Buffer
	if err := json.Compact(&buf, b); err != nil {
		return string(b)
	}
	return buf.String()
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

// specYAML renders a stored spec as YAML: through internal/policy when this
// tendctl understands it (field order of the example), else key-sorted.
func specYAML(p *adminv1.Policy) ([]byte, error) {
	if pol, err := policy.FromSpecJSON(p.GetName(), p.GetVersion(), p.GetSpecJson()); err == nil {
		var buf bytes.Buffer
		enc := yamlv3.NewEncoder(&buf)
		enc.SetIndent(2)
		if err := enc.Encode(&pol.Spec); err == nil && enc.Close() == nil {
			return buf.Bytes(), nil
		}
	}
	b, err := yaml.JSONToYAML(p.GetSpecJson())
	if err != nil {
		return nil, fmt.Errorf("policy %s: the control plane sent a spec that is not JSON: %w", p.GetName(), err)
	}
	return b, nil
}

func describeAgent(w io.Writer, now time.Time, ag *adminv1.Agent, checks []*adminv1.CheckState) error {
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	o := toAgentObject(ag)
	fmt.Fprintf(tw, "Name:\t%s\n", o.Name)
	fmt.Fprintf(tw, "ID:\t%s\n", o.ID)
	fmt.Fprintf(tw, "Status:\t%s\n", o.Status)
	fmt.Fprintf(tw, "Last seen:\t%s\n", ago(now, o.LastSeen))
	fmt.Fprintf(tw, "Labels:\t%s\n", labelString(o.Labels))
	fmt.Fprintf(tw, "Version:\t%s\n", dash(o.Version))
	if t := timePtr(ag.GetEnrolledAt()); t != nil {
		fmt.Fprintf(tw, "Enrolled:\t%s (%s)\n", t.Local().Format(time.RFC3339), ago(now, t))
	}
	if ag.GetRevoked() {
		fmt.Fprintf(tw, "Revoked:\tyes\n")
	}
	fmt.Fprintf(tw, "Results stored:\t%d\n", ag.GetResultsStored())
	if n := ag.GetOutboxDroppedTotal(); n > 0 {
		fmt.Fprintf(tw, "Outbox dropped:\t%d results (the agent's outbox overflowed while disconnected)\n", n)
	}
	if facts := ag.GetFacts(); len(facts) > 0 {
		fmt.Fprintf(tw, "Facts:\t%s\n", labelString(facts))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w, "Checks:")
	if len(checks) == 0 {
		fmt.Fprintln(w, "  <none>")
		return nil
	}
	objs := make([]checkObject, 0, len(checks))
	for _, c := range checks {
		objs = append(objs, toCheckObject(c))
	}
	sort.Slice(objs, func(i, j int) bool { return objs[i].Check < objs[j].Check })
	tw = tabwriter.NewWriter(w, 0, 8, 3, ' ', 0)
	fmt.Fprintln(tw, "  CHECK\tSTATUS\tSINCE\tLAST RUN\tOUTPUT")
	for _, c := range objs {
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\n", c.Check, c.Status, ago(now, c.Since), ago(now, c.LastRun), dash(firstLine(c.Output, 60)))
	}
	return tw.Flush()
}
