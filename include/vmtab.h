/*
 * vmtab.h — the VM table: the one owner of every VM this host knows, in
 * either role.  An entry holds:
 *
 *   - the VM's name and its role as the catalog records it (role.h's
 *     view: role, generation, the identity it belongs to, reassigned,
 *     fenced), set again by whoever changes the catalog (vt_set_rel);
 *   - the role objects that serve it: a struct pvm (primary.h) and a
 *     struct rvm (replica.h); a VM primary here by an unplanned failover
 *     not yet committed has both (the rvm keeps the store open for another
 *     point or the commit), a primary whose disks nothing here names has
 *     neither (vt_set_note says why);
 *   - one per-VM state: a role change holds the VM (vt_claim) or not, and
 *     how many store jobs (test failover, verify, prune, forget) use the
 *     replica's store.  A role change cannot start while a store job runs,
 *     a store job cannot start during a role change; while one holds the
 *     VM, no cycle starts and no session is welcomed for it.
 *
 * Role objects register what the table may ask of them (struct vt_ops),
 * so that a role change can wait until nothing uses the VM
 * (vt_when_idle) without the table knowing the roles' code.
 *
 * Everything here runs in the loop thread.
 */
#ifndef REPLICAD_VMTAB_H
#define REPLICAD_VMTAB_H

#include <stddef.h>

#include "catalog.h"
#include "role.h"

struct event_base;
struct pvm;
struct rvm;
struct vmtab;
struct vme;

enum vt_slot {
	VT_PRIMARY,		/* struct pvm */
	VT_REPLICA,		/* struct rvm */
};

struct vt_ops {
	/* A role change waits: end sessions and cycles now, start none;
	 * call vt_poke() as each ends. */
	void	(*quiesce)(void *obj);
	/* Does a session or a job still use obj? */
	int	(*in_use)(void *obj);
	/* The role change let go of the VM: carry on (may be NULL). */
	void	(*resume)(void *obj);
};

struct vmtab *vt_new(struct event_base *base);
/* Frees the table and its entries, not the role objects. */
void	vt_free(struct vmtab *vt);

struct vme *vt_find(const struct vmtab *vt, const char *name);
/* A new entry (none may exist for name), in the state of rel. */
struct vme *vt_add(struct vmtab *vt, const struct cat_rel *rel);
/* Drop an entry that has no role object and is not claimed. */
void	vt_remove(struct vme *e);
/* Entries in name order: for (i = 0; i < vt_count(vt); i++) vt_at(vt, i). */
size_t	vt_count(const struct vmtab *vt);
struct vme *vt_at(const struct vmtab *vt, size_t i);

const char *vt_name(const struct vme *e);
/* The catalog changed: the entry's view follows rel. */
void	vt_set_rel(struct vme *e, const struct cat_rel *rel);
/* The view, with busy set when a role change holds the VM. */
void	vt_view(const struct vme *e, struct role_view *out);
enum role_state vt_state(const struct vme *e);
uint64_t vt_generation(const struct vme *e);
const char *vt_owner(const struct vme *e);
/* Why no role object serves the VM ("" if one does). */
void	vt_set_note(struct vme *e, const char *note);
const char *vt_note(const struct vme *e);

void	vt_attach(struct vme *e, enum vt_slot slot, void *obj,
	    const struct vt_ops *ops);
void	vt_detach(struct vme *e, enum vt_slot slot);
struct pvm *vt_pvm(const struct vme *e);
struct rvm *vt_rvm(const struct vme *e);

/* Take the VM for a role change: RD_ERR_BUSY if another holds it or a
 * store job runs. */
int	vt_claim(struct vme *e);
/* Let it go; the role objects resume. */
void	vt_release(struct vme *e);
int	vt_claimed(const struct vme *e);
/* A store job starts: RD_ERR_BUSY during a role change. */
int	vt_use(struct vme *e);
void	vt_unuse(struct vme *e);
int	vt_in_use(const struct vme *e);

/* The VM is claimed: its role objects quiesce, and fn(arg) is called
 * from a callback of its own once none of them is in use. */
void	vt_when_idle(struct vme *e, void (*fn)(void *), void *arg);
/* A role object's session or job ended: look again. */
void	vt_poke(struct vme *e);

#endif
