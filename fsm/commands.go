package fsm

import (
	"fmt"
	"sort"
	"strings"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	vigilv1 "github.com/vigilha/vigil/proto/vigil/v1"
)

// Event kinds recorded in a group's history.
const (
	EventGroupCreated = "group-created"
	EventGroupUpdated = "group-updated"
	EventPaused       = "paused"
	EventResumed      = "resumed"
)

// applySyncGroups makes the set of groups equal to the command's. It checks
// every spec first and changes nothing when one is bad.
func (f *FSM) applySyncGroups(index uint64, cmd *vigilv1.Command, c *vigilv1.SyncGroups) error {
	want := make(map[string]*vigilv1.GroupSpec, len(c.GetGroups()))
	for i, spec := range c.GetGroups() {
		if err := checkSpec(spec); err != nil {
			return fmt.Errorf("sync_groups: groups[%d]: %w: %v", i, ErrInvalidCommand, err)
		}
		if _, dup := want[spec.GetName()]; dup {
			return fmt.Errorf("sync_groups: groups[%d]: %w: duplicate group %q", i, ErrInvalidCommand, spec.GetName())
		}
		if g, ok := f.groups[spec.GetName()]; ok && !hasMember(spec, g.GetPrimary()) {
			return fmt.Errorf("sync_groups: groups[%d]: %w: group %q: current primary %q is not among the new members",
				i, ErrInvalidCommand, spec.GetName(), g.GetPrimary())
		}
		want[spec.GetName()] = spec
	}
	for name := range f.groups {
		if _, ok := want[name]; !ok {
			delete(f.groups, name)
		}
	}
	names := make([]string, 0, len(want))
	for name := range want {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		spec := want[name]
		g, ok := f.groups[name]
		if !ok {
			g = &vigilv1.Group{
				Spec:      proto.Clone(spec).(*vigilv1.GroupSpec),
				Primary:   spec.GetInitialPrimary(),
				CreatedAt: cmd.GetAt(),
				UpdatedAt: cmd.GetAt(),
			}
			f.groups[name] = g
			f.record(g, index, cmd, EventGroupCreated, fmt.Sprintf("primary %s, %d members", g.GetPrimary(), len(spec.GetMembers())))
			continue
		}
		if proto.Equal(g.GetSpec(), spec) {
			continue
		}
		g.Spec = proto.Clone(spec).(*vigilv1.GroupSpec)
		g.UpdatedAt = cmd.GetAt()
		f.record(g, index, cmd, EventGroupUpdated, fmt.Sprintf("%d members", len(spec.GetMembers())))
	}
	return nil
}

func (f *FSM) applySetPaused(index uint64, cmd *vigilv1.Command, c *vigilv1.SetPaused) error {
	g, ok := f.groups[c.GetGroup()]
	if !ok {
		return fmt.Errorf("set_paused: %w: %q", ErrGroupNotFound, c.GetGroup())
	}
	if g.GetPaused() == c.GetPaused() {
		// Idempotent: a repeated pause changes nothing and records nothing.
		return nil
	}
	g.Paused = c.GetPaused()
	g.UpdatedAt = cmd.GetAt()
	if c.GetPaused() {
		g.PausedReason = c.GetReason()
		g.PausedAt = cmd.GetAt()
		f.record(g, index, cmd, EventPaused, c.GetReason())
	} else {
		g.PausedReason = ""
		g.PausedAt = nil
		f.record(g, index, cmd, EventResumed, "")
	}
	return nil
}

// record appends an event to the group's history, dropping the oldest
// beyond the limit.
func (f *FSM) record(g *vigilv1.Group, index uint64, cmd *vigilv1.Command, kind, detail string) {
	g.History = append(g.History, &vigilv1.Event{
		Index:  index,
		At:     timestamppb.New(cmd.GetAt().AsTime()),
		Kind:   kind,
		Detail: detail,
		Epoch:  g.GetEpoch(),
		Actor:  cmd.GetActor(),
	})
	if over := len(g.History) - f.historyLimit; over > 0 {
		g.History = append([]*vigilv1.Event(nil), g.History[over:]...)
	}
}

// checkSpec refuses specs that would make the state meaningless. The config
// loader checks much more; this guards the log against a buggy proposer.
func checkSpec(s *vigilv1.GroupSpec) error {
	if strings.TrimSpace(s.GetName()) == "" {
		return fmt.Errorf("empty group name")
	}
	if len(s.GetMembers()) == 0 {
		return fmt.Errorf("group %q: no members", s.GetName())
	}
	seen := map[string]bool{}
	for j, m := range s.GetMembers() {
		if m.GetName() == "" {
			return fmt.Errorf("group %q: members[%d]: empty name", s.GetName(), j)
		}
		if seen[m.GetName()] {
			return fmt.Errorf("group %q: members[%d]: duplicate member %q", s.GetName(), j, m.GetName())
		}
		seen[m.GetName()] = true
	}
	if !seen[s.GetInitialPrimary()] {
		return fmt.Errorf("group %q: initial primary %q is not a member", s.GetName(), s.GetInitialPrimary())
	}
	return nil
}

func hasMember(s *vigilv1.GroupSpec, name string) bool {
	for _, m := range s.GetMembers() {
		if m.GetName() == name {
			return true
		}
	}
	return false
}
