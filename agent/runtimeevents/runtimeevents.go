// Package runtimeevents follows containerd's events in the CRI namespace. A sandbox or container
// started, exited or deleted becomes a check trigger, so a pod is checked as soon as its init
// containers have run rather than at the next periodic pass; exec processes (kubelet's exec
// probes) are ignored: they exit every few seconds and say nothing about capture. The same
// events keep the node's pod listing fresh (Listing), so an agent need not list the node while
// nothing changed. The subscription is re-established with backoff when containerd restarts.
package runtimeevents

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	apievents "github.com/containerd/containerd/api/events"
	eventsapi "github.com/containerd/containerd/api/services/events/v1"

	"github.com/meshdoctor/meshdoctor/nodecheck/discover/containerd"
)

// Namespace is the containerd namespace of Kubernetes' containers.
const Namespace = "k8s.io"

// Trigger asks for a check of the pod owning the container (a sandbox id or a container id).
type Trigger func(containerID, why string)

// Watch subscribes to containerd at address and calls trigger until ctx ends. listing, when not
// nil, is told of every change and of the subscription's state, so that it keeps the node's
// listing only while the subscription would have said otherwise.
func Watch(ctx context.Context, address string, trigger Trigger, listing *Listing, log *slog.Logger) error {
	conn, err := containerd.Dial(address)
	if err != nil {
		return fmt.Errorf("containerd events: %w", err)
	}
	defer conn.Close()
	c := eventsapi.NewEventsClient(conn)
	backoff := time.Second
	for ctx.Err() == nil {
		start := time.Now()
		err := watchOnce(ctx, c, trigger, listing, log, address)
		if ctx.Err() != nil {
			return nil
		}
		if time.Since(start) > time.Minute {
			backoff = time.Second
		}
		log.Warn("containerd event subscription ended; resubscribing", "address", address, "err", err, "in", backoff.String())
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Minute)
	}
	return nil
}

func watchOnce(ctx context.Context, c eventsapi.EventsClient, trigger Trigger, listing *Listing, log *slog.Logger, address string) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.Subscribe(ctx, &eventsapi.SubscribeRequest{Filters: []string{
		`namespace=="k8s.io",topic=="/tasks/start"`,
		`namespace=="k8s.io",topic=="/tasks/exit"`,
		`namespace=="k8s.io",topic=="/tasks/delete"`,
		// Not triggers: they only say the node's listing changed (a container made, its
		// labels or spec updated, its record removed).
		`namespace=="k8s.io",topic~="^/containers/"`,
	}})
	if err != nil {
		return fmt.Errorf("subscribing to containerd events: %w", err)
	}
	listing.subscribed(true)
	defer listing.subscribed(false)
	// A new subscription may have missed events: let the agent look at the whole node. (Its
	// sweep may be folded into one already pending, so the subscription says itself.)
	log.Info("subscribed to containerd's events", "address", address)
	trigger("", "containerd event subscription (re)started")
	for {
		env, err := stream.Recv()
		if err != nil {
			return fmt.Errorf("containerd events: %w", err)
		}
		if env.GetEvent() == nil {
			continue
		}
		v, err := env.GetEvent().UnmarshalNew()
		if err != nil {
			listing.changed() // an event of a type this build does not know
			continue
		}
		// The listing is dropped before the trigger, so that the pass it asks for lists anew.
		switch e := v.(type) {
		case *apievents.TaskStart:
			listing.changed()
			trigger(e.ContainerID, "container started")
		case *apievents.TaskExit:
			if e.ID == e.ContainerID {
				listing.changed()
				trigger(e.ContainerID, "container exited")
			}
		case *apievents.TaskDelete:
			if e.ID == "" || e.ID == e.ContainerID {
				listing.changed()
				trigger(e.ContainerID, "container deleted")
			}
		case *apievents.ContainerCreate, *apievents.ContainerUpdate, *apievents.ContainerDelete:
			listing.changed()
		default:
			// An event this code does not know (a newer containerd's): the listing may have
			// changed.
			listing.changed()
		}
	}
}
