/*
 * vmtab.c — the VM table (vmtab.h).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "err.h"
#include "log.h"
#include "vmtab.h"
#include "xmalloc.h"

struct vt_obj {
	void			*obj;
	const struct vt_ops	*ops;
};

struct vme {
	struct vmtab		*vt;
	char			 name[NAME_MAX_LEN + 1];
	struct role_view	 view;		/* busy: see claimed */
	struct vt_obj		 slot[2];
	int			 claimed;	/* a role change holds it */
	int			 users;		/* store jobs */
	void			(*idle_fn)(void *);
	void			*idle_arg;
	struct event		*idle_ev;
	char			 note[256];
};

struct vmtab {
	struct event_base	*base;
	struct vme		**v;		/* by name */
	size_t			 n;
};

struct vmtab *
vt_new(struct event_base *base)
{
	struct vmtab *vt = xcalloc(1, sizeof(*vt));
	vt->base = base;
	return vt;
}

static void
entry_free(struct vme *e)
{
	if (e->idle_ev)
		event_free(e->idle_ev);
	free(e);
}

void
vt_free(struct vmtab *vt)
{
	if (vt == NULL)
		return;
	for (size_t i = 0; i < vt->n; i++)
		entry_free(vt->v[i]);
	free(vt->v);
	free(vt);
}

/* Where name is, or would go, in the sorted array. */
static size_t
slot_of(const struct vmtab *vt, const char *name, int *found)
{
	size_t lo = 0, hi = vt->n;
	*found = 0;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int c = strcmp(vt->v[mid]->name, name);
		if (c == 0) {
			*found = 1;
			return mid;
		}
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

struct vme *
vt_find(const struct vmtab *vt, const char *name)
{
	int found;
	size_t i = slot_of(vt, name, &found);
	return found ? vt->v[i] : NULL;
}

struct vme *
vt_add(struct vmtab *vt, const struct cat_rel *rel)
{
	int found;
	size_t i = slot_of(vt, rel->vm, &found);
	if (found)
		fatalx("%s: added to the VM table twice", rel->vm);
	struct vme *e = xcalloc(1, sizeof(*e));
	e->vt = vt;
	snprintf(e->name, sizeof(e->name), "%s", rel->vm);
	role_view_of(rel, &e->view);
	vt->v = xreallocarray(vt->v, vt->n + 1, sizeof(*vt->v));
	memmove(&vt->v[i + 1], &vt->v[i], (vt->n - i) * sizeof(*vt->v));
	vt->v[i] = e;
	vt->n++;
	return e;
}

void
vt_remove(struct vme *e)
{
	struct vmtab *vt = e->vt;
	int found;
	size_t i = slot_of(vt, e->name, &found);

	if (!found || vt->v[i] != e || e->slot[0].obj || e->slot[1].obj ||
	    e->claimed || e->users)
		fatalx("%s: removed from the VM table while in use", e->name);
	memmove(&vt->v[i], &vt->v[i + 1], (vt->n - i - 1) * sizeof(*vt->v));
	vt->n--;
	entry_free(e);
}

size_t
vt_count(const struct vmtab *vt)
{
	return vt->n;
}

struct vme *
vt_at(const struct vmtab *vt, size_t i)
{
	return i < vt->n ? vt->v[i] : NULL;
}

const char *
vt_name(const struct vme *e)
{
	return e->name;
}

void
vt_set_rel(struct vme *e, const struct cat_rel *rel)
{
	role_view_of(rel, &e->view);
}

void
vt_view(const struct vme *e, struct role_view *out)
{
	*out = e->view;
	out->busy = e->claimed;
}

enum role_state
vt_state(const struct vme *e)
{
	return e->view.state;
}

uint64_t
vt_generation(const struct vme *e)
{
	return e->view.generation;
}

const char *
vt_owner(const struct vme *e)
{
	return e->view.owner;
}

void
vt_set_note(struct vme *e, const char *note)
{
	snprintf(e->note, sizeof(e->note), "%s", note ? note : "");
}

const char *
vt_note(const struct vme *e)
{
	return e->note;
}

void
vt_attach(struct vme *e, enum vt_slot slot, void *obj,
    const struct vt_ops *ops)
{
	if (e->slot[slot].obj != NULL)
		fatalx("%s: a second %s object", e->name, slot == VT_PRIMARY ?
		    "primary" : "replica");
	e->slot[slot].obj = obj;
	e->slot[slot].ops = ops;
	e->note[0] = '\0';
}

void
vt_detach(struct vme *e, enum vt_slot slot)
{
	e->slot[slot].obj = NULL;
	e->slot[slot].ops = NULL;
}

struct pvm *
vt_pvm(const struct vme *e)
{
	return e->slot[VT_PRIMARY].obj;
}

struct rvm *
vt_rvm(const struct vme *e)
{
	return e->slot[VT_REPLICA].obj;
}

int
vt_claim(struct vme *e)
{
	if (e->claimed || e->users > 0)
		return RD_ERR_BUSY;
	e->claimed = 1;
	return 0;
}

void
vt_release(struct vme *e)
{
	e->claimed = 0;
	e->idle_fn = NULL;
	if (e->idle_ev)
		event_del(e->idle_ev);
	for (int s = 0; s < 2; s++)
		if (e->slot[s].obj && e->slot[s].ops->resume)
			e->slot[s].ops->resume(e->slot[s].obj);
}

int
vt_claimed(const struct vme *e)
{
	return e->claimed;
}

int
vt_use(struct vme *e)
{
	if (e->claimed)
		return RD_ERR_BUSY;
	e->users++;
	return 0;
}

void
vt_unuse(struct vme *e)
{
	if (e->users > 0)
		e->users--;
}

int
vt_in_use(const struct vme *e)
{
	return e->users > 0;
}

static int
objects_in_use(const struct vme *e)
{
	for (int s = 0; s < 2; s++)
		if (e->slot[s].obj && e->slot[s].ops->in_use(e->slot[s].obj))
			return 1;
	return 0;
}

/* The waiter runs from a callback of its own, never inside the session
 * code that ended the last use. */
static void
on_idle(evutil_socket_t fd, short what, void *arg)
{
	struct vme *e = arg;
	if (e->idle_fn == NULL || objects_in_use(e))
		return;
	void (*fn)(void *) = e->idle_fn;
	e->idle_fn = NULL;
	fn(e->idle_arg);
}

void
vt_poke(struct vme *e)
{
	struct timeval now = { 0, 0 };
	if (e->idle_fn == NULL || objects_in_use(e))
		return;
	if (e->idle_ev == NULL)
		e->idle_ev = evtimer_new(e->vt->base, on_idle, e);
	evtimer_add(e->idle_ev, &now);
}

void
vt_when_idle(struct vme *e, void (*fn)(void *), void *arg)
{
	if (!e->claimed)
		fatalx("%s: waiting for it to be idle without a claim",
		    e->name);
	e->idle_fn = fn;
	e->idle_arg = arg;
	for (int s = 0; s < 2; s++)
		if (e->slot[s].obj)
			e->slot[s].ops->quiesce(e->slot[s].obj);
	vt_poke(e);
}
