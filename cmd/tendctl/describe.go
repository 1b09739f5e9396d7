package main

import (
	"bytes"
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
		Short: "Show one policy (spec and matched agents), agent (details and checks) or incident (the whole timeline)",
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
	spec, err := specYAML(p)
	if err != nil {
		return err
	}
	fmt.Fprintln(w, "Spec:")
	for _, line := range strings.Split(strings.TrimRight(string(spec), "\n"), "\n") {
		fmt.Fprintln(w, "  "+line)
	}
	return nil
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
