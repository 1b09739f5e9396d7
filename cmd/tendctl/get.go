package main

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/spf13/cobra"

	adminv1 "tend.dev/tend/proto/tend/admin/v1"
)

// Resource types, with the names accepted for each.
const (
	resAgents      = "agents"
	resPolicies    = "policies"
	resChecks      = "checks"
	resResults     = "results"
	resIncidents   = "incidents"
	resTasks       = "tasks"
	resCredentials = "credentials"
	resKeys        = "keys"
)

var resourceAliases = map[string]string{
	"agents": resAgents, "agent": resAgents, "ag": resAgents,
	"policies": resPolicies, "policy": resPolicies, "po": resPolicies, "pol": resPolicies,
	"checks": resChecks, "check": resChecks, "ch": resChecks,
	"results": resResults, "result": resResults,
	"incidents": resIncidents, "incident": resIncidents, "inc": resIncidents,
	"tasks": resTasks, "task": resTasks,
	"credentials": resCredentials, "credential": resCredentials, "cred": resCredentials, "creds": resCredentials,
	"keys": resKeys, "key": resKeys, "signingkeys": resKeys,
}

// notYet are resource types of the design that this admin API does not
// serve yet.
var notYet = []string{}

// parseResource splits "TYPE", "TYPE/NAME" or "TYPE NAME..." arguments into
// the canonical type and the names.
func parseResource(cmd *cobra.Command, args []string, allowed ...string) (string, []string, error) {
	if len(args) == 0 {
		return "", nil, usageErrorf(cmd, "missing resource type (want one of %s)", strings.Join(allowed, ", "))
	}
	typ, name, hasName := strings.Cut(args[0], "/")
	names := args[1:]
	if hasName {
		if name == "" {
			return "", nil, usageErrorf(cmd, "empty name in %q", args[0])
		}
		if len(names) > 0 {
			return "", nil, usageErrorf(cmd, "use either TYPE/NAME or TYPE NAME..., not both")
		}
		names = []string{name}
	}
	res, ok := resourceAliases[strings.ToLower(typ)]
	if !ok || !slices.Contains(allowed, res) {
		if slices.Contains(notYet, strings.ToLower(typ)) {
			return "", nil, fmt.Errorf("%s are not served by this version of the admin API yet", typ)
		}
		return "", nil, usageErrorf(cmd, "unknown resource type %q (want one of %s)", typ, strings.Join(allowed, ", "))
	}
	return res, names, nil
}

func newGetCmd(a *app) *cobra.Command {
	var (
		output         string
		agent          string
		limit          uint32
		includeRevoked bool
		openOnly       bool
		incident       string
	)
	cmd := &cobra.Command{
		Use:   "get TYPE [NAME...]",
		Short: "List agents, policies, checks, results, incidents, tasks, credentials or signing keys",
		Long: `List resources:

  agents [NAME...]            enrolled agents and their liveness
  policies [NAME...]          stored policies
  checks [CHECK...] [--agent AGENT]
                              the latest result of every (agent, check)
  results AGENT CHECK         the stored results of one check, oldest first
  incidents [ID...] [--agent AGENT] [--open]
                              incidents, newest first
  tasks [ID...] [--agent AGENT] [--incident ID]
                              remediation tasks, newest first; APPROVAL shows
                              the time left to approve one awaiting approval
                              (tendctl approve task ID), or who approved it
  credentials [NAME|SERIAL...]
                              admin API credentials (admin role)
  keys [KEY-ID...]            task-signing keys and how many agents hold each

TYPE/NAME works too (agent/web-1), and singular forms (agent, policy, check).
-o json prints a JSON array of objects; their field names are stable:
  agent:  name, id, labels, status, lastSeen, version
  policy: name, version, spec
  check:  agent, check, status, output, lastRun, since, metrics
  incident: id, agent, policy, state, openedAt, resolvedAt, attempts, reason, timeline
  task:   id, incident, agent, action, params, state, seq, createdAt, finishedAt, output,
          approvedBy, approvedAt, approvalDeadline
  credential: name, role, serial, issuedAt, expiresAt, issuedBy, revoked
  key:    keyId, state, createdAt, agentsHolding, agentsTotal`,
		Example: `  tendctl get agents
  tendctl get agent/web-1 -o yaml
  tendctl get checks --agent web-1
  tendctl get policies -o json | jq '.[].name'
  tendctl get results web-1 web-nginx-down
  tendctl get tasks
  tendctl get credentials
  tendctl get keys`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkFormat(output); err != nil {
				return usageErrorf(cmd, "-o: %v", err)
			}
			res, names, err := parseResource(cmd, args, resAgents, resPolicies, resChecks, resResults, resIncidents, resTasks, resCredentials, resKeys)
			if err != nil {
				return err
			}
			p := printer{out: a.stdout, errOut: a.stderr, format: output, now: a.now()}
			ctx := cmd.Context()
			switch res {
			case resAgents:
				objs, err := getAgents(ctx, a, names, includeRevoked)
				if err != nil {
					return err
				}
				return printList(p, objs, agentTable)
			case resPolicies:
				objs, err := getPolicies(ctx, a, names)
				if err != nil {
					return err
				}
				return printList(p, objs, policyTable)
			case resChecks:
				objs, err := getChecks(ctx, a, agent, names)
				if err != nil {
					return err
				}
				return printList(p, objs, checkTable)
			case resIncidents:
				objs, err := getIncidents(ctx, a, agent, openOnly, names)
				if err != nil {
					return err
				}
				return printList(p, objs, incidentTable)
			case resTasks:
				objs, err := getTasks(ctx, a, agent, incident)
				if err != nil {
					return err
				}
				if len(names) > 0 {
					for _, n := range names {
						if !slices.ContainsFunc(objs, func(o taskObject) bool { return o.ID == n }) {
							return fmt.Errorf("task %q not found (tendctl get tasks lists them)", n)
						}
					}
					objs = slices.DeleteFunc(objs, func(o taskObject) bool { return !slices.Contains(names, o.ID) })
				}
				if err := printList(p, objs, taskTable); err != nil {
					return err
				}
				if output == formatTable {
					awaitingHint(a.stderr, objs)
				}
				return nil
			case resCredentials:
				objs, err := getCredentials(ctx, a, names)
				if err != nil {
					return err
				}
				return printList(p, objs, credentialTable)
			case resKeys:
				objs, err := getKeys(ctx, a, names)
				if err != nil {
					return err
				}
				return printList(p, objs, keyTable)
			default: // results
				if len(names) != 2 {
					return usageErrorf(cmd, "get results needs AGENT and CHECK, e.g. tendctl get results web-1 web-nginx-down")
				}
				resp, err := call(ctx, a, adminv1.AdminServiceClient.ListResults, &adminv1.ListResultsRequest{Agent: names[0], CheckId: names[1], Limit: limit})
				if err != nil {
					return err
				}
				objs := make([]resultObject, 0, len(resp.GetResults()))
				for _, r := range resp.GetResults() {
					objs = append(objs, toResultObject(names[0], r))
				}
				return printList(p, objs, resultTable)
			}
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", formatTable, "output format: table, json or yaml")
	cmd.Flags().StringVar(&agent, "agent", "", "checks, incidents, tasks: only those of this agent (name or id)")
	cmd.Flags().Uint32Var(&limit, "limit", 0, "results: only the newest N (0: all stored)")
	cmd.Flags().BoolVar(&openOnly, "open", false, "incidents: only those not resolved or escalated")
	cmd.Flags().StringVar(&incident, "incident", "", "tasks: only those of this incident")
	cmd.Flags().BoolVar(&includeRevoked, "include-revoked", false, "agents: also list agents revoked with 'tendctl delete agent'")
	return cmd
}

func getAgents(ctx context.Context, a *app, names []string, includeRevoked bool) ([]agentObject, error) {
	resp, err := call(ctx, a, adminv1.AdminServiceClient.ListAgents, &adminv1.ListAgentsRequest{IncludeRevoked: includeRevoked})
	if err != nil {
		return nil, err
	}
	objs := make([]agentObject, 0, len(resp.GetAgents()))
	for _, ag := range resp.GetAgents() {
		objs = append(objs, toAgentObject(ag))
	}
	sort.Slice(objs, func(i, j int) bool { return objs[i].Name < objs[j].Name })
	if len(names) == 0 {
		return objs, nil
	}
	var out []agentObject
	for _, n := range names {
		i := slices.IndexFunc(objs, func(o agentObject) bool { return o.Name == n || o.ID == n })
		if i < 0 {
			return nil, fmt.Errorf("agent %q not found (tendctl get agents lists them)", n)
		}
		out = append(out, objs[i])
	}
	return out, nil
}

func getPolicies(ctx context.Context, a *app, names []string) ([]policyObject, error) {
	var ps []*adminv1.Policy
	if len(names) == 0 {
		resp, err := call(ctx, a, adminv1.AdminServiceClient.ListPolicies, &adminv1.ListPoliciesRequest{})
		if err != nil {
			return nil, err
		}
		ps = resp.GetPolicies()
		sort.Slice(ps, func(i, j int) bool { return ps[i].GetName() < ps[j].GetName() })
	} else {
		for _, n := range names {
			resp, err := call(ctx, a, adminv1.AdminServiceClient.GetPolicy, &adminv1.GetPolicyRequest{Name: n})
			if err != nil {
				return nil, err
			}
			ps = append(ps, resp.GetPolicy())
		}
	}
	objs := make([]policyObject, 0, len(ps))
	for _, p := range ps {
		o, err := toPolicyObject(p)
		if err != nil {
			return nil, err
		}
		objs = append(objs, o)
	}
	return objs, nil
}

func getChecks(ctx context.Context, a *app, agent string, checks []string) ([]checkObject, error) {
	resp, err := call(ctx, a, adminv1.AdminServiceClient.ListChecks, &adminv1.ListChecksRequest{Agent: agent})
	if err != nil {
		return nil, err
	}
	objs := make([]checkObject, 0, len(resp.GetChecks()))
	for _, c := range resp.GetChecks() {
		if len(checks) > 0 && !slices.Contains(checks, c.GetCheckId()) {
			continue
		}
		objs = append(objs, toCheckObject(c))
	}
	sort.Slice(objs, func(i, j int) bool {
		if objs[i].Agent != objs[j].Agent {
			return objs[i].Agent < objs[j].Agent
		}
		return objs[i].Check < objs[j].Check
	})
	return objs, nil
}
