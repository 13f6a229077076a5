package main

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// knobs are the behaviour settings that a request may override with
// X-Mock-<Flag> headers. The zero value is not useful; start from
// defaultKnobs.
type knobs struct {
	// Tokens is the number of completion tokens per reply, before any
	// max_tokens-style cap in the request.
	Tokens int
	// TTFT is the delay before the first byte of the response.
	TTFT time.Duration
	// Gap is the delay between two streamed tokens. Non-streamed replies
	// wait TTFT + Gap*(Tokens-1) in total, as a real engine would.
	Gap time.Duration
	// ErrorRate is the fraction (0..1) of inference requests that fail
	// with ErrorStatus.
	ErrorRate float64
	// ErrorStatus is the HTTP status of injected errors.
	ErrorStatus int
	// DropAfter closes the TCP connection of a stream after this many
	// token events, without a terminating event; -1 disables it.
	DropAfter int
	// CloseAfterStream sends Connection: close on streamed responses.
	CloseAfterStream bool
	// OmitUsage removes token usage from every reply format.
	OmitUsage bool
	// Model is reported by /v1/models and /api/tags and used when a
	// request names no model.
	Model string
	// Name, when set, is sent as the X-Mock-Backend response header.
	Name string
}

func defaultKnobs() knobs {
	return knobs{Tokens: 16, ErrorStatus: 500, DropAfter: -1, Model: "mock-model"}
}

// validate reports the first knob that is out of range, naming it as the
// flag that sets it.
func (k knobs) validate() error {
	switch {
	case k.Tokens < 0:
		return fmt.Errorf("tokens: must be >= 0, got %d", k.Tokens)
	case k.TTFT < 0:
		return fmt.Errorf("ttft: must be >= 0, got %s", k.TTFT)
	case k.Gap < 0:
		return fmt.Errorf("gap: must be >= 0, got %s", k.Gap)
	case k.ErrorRate < 0 || k.ErrorRate > 1:
		return fmt.Errorf("error-rate: must be within 0..1, got %g", k.ErrorRate)
	case k.ErrorStatus < 400 || k.ErrorStatus > 599:
		return fmt.Errorf("error-status: must be within 400..599, got %d", k.ErrorStatus)
	case k.DropAfter < -1:
		return fmt.Errorf("drop-after: must be >= -1, got %d", k.DropAfter)
	case k.Model == "":
		return errors.New("model: must not be empty")
	}
	return nil
}

// headerPrefix starts every per-request override header, in the
// canonical form net/http stores header keys in.
const headerPrefix = "X-Mock-"

// withHeaders returns k overridden by the request's X-Mock-<Flag>
// headers (X-Mock-Tokens, X-Mock-Ttft, X-Mock-Gap, X-Mock-Error-Rate,
// X-Mock-Error-Status, X-Mock-Drop-After, X-Mock-Close-After-Stream,
// X-Mock-Omit-Usage, X-Mock-Model, X-Mock-Name). It walks the header map
// once and allocates nothing when no override is present.
func (k knobs) withHeaders(h http.Header) (knobs, error) {
	for key, vals := range h {
		if len(vals) == 0 || !strings.HasPrefix(key, headerPrefix) {
			continue
		}
		v := strings.TrimSpace(vals[0])
		var err error
		switch key[len(headerPrefix):] {
		case "Tokens":
			k.Tokens, err = strconv.Atoi(v)
		case "Ttft":
			k.TTFT, err = time.ParseDuration(v)
		case "Gap":
			k.Gap, err = time.ParseDuration(v)
		case "Error-Rate":
			k.ErrorRate, err = strconv.ParseFloat(v, 64)
		case "Error-Status":
			k.ErrorStatus, err = strconv.Atoi(v)
		case "Drop-After":
			k.DropAfter, err = strconv.Atoi(v)
		case "Close-After-Stream":
			k.CloseAfterStream, err = strconv.ParseBool(v)
		case "Omit-Usage":
			k.OmitUsage, err = strconv.ParseBool(v)
		case "Model":
			k.Model = v
		case "Name":
			k.Name = v
		default:
			continue
		}
		if err != nil {
			return k, fmt.Errorf("header %s: %w", key, err)
		}
	}
	if err := k.validate(); err != nil {
		return k, fmt.Errorf("mock headers: %w", err)
	}
	return k, nil
}
