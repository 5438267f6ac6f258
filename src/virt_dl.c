/*
 * virt_dl.c — the libvirt calls of virt.c for replctl, loaded when first
 * used (dlopen of libvirt.so.0) instead of linked.
 *
 * Linking libvirt brings some fifty shared libraries (GnuTLS, GLib, ...)
 * whose loading and constructors cost about 20 ms at every start of
 * replctl, though only `replctl discover` talks to libvirt.  replctl is
 * linked with this file in place of -lvirt: each function below has
 * libvirt's name and prototype and calls the real one.  When libvirt
 * cannot be loaded, the calls fail (NULL, -1) and virGetLastErrorMessage()
 * says why.  replicad links libvirt itself and does not use this file.
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>

#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>

#define LIBVIRT_SONAME	"libvirt.so.0"

static void		*lib;
static char		 why[512];
static pthread_once_t	 once = PTHREAD_ONCE_INIT;

static void
load(void)
{
	if ((lib = dlopen(LIBVIRT_SONAME, RTLD_NOW | RTLD_LOCAL)) == NULL)
		snprintf(why, sizeof(why), "cannot load libvirt: %s",
		    dlerror());
}

/* The real function called name, or NULL (why says so). */
static void *
sym(const char *name)
{
	pthread_once(&once, load);
	if (lib == NULL)
		return NULL;
	void *f = dlsym(lib, name);
	if (f == NULL)
		snprintf(why, sizeof(why), "libvirt has no %s", name);
	return f;
}

/* A function of libvirt: the real one, or fail with the value bad. */
#define CALL(ret, name, params, args, bad)				\
ret name params								\
{									\
	static ret (*f) params;						\
	if (f == NULL && (f = (ret (*) params)sym(#name)) == NULL)	\
		return bad;						\
	return f args;							\
}

CALL(int, virInitialize, (void), (), -1)
CALL(virConnectPtr, virConnectOpen, (const char *name), (name), NULL)
CALL(int, virConnectClose, (virConnectPtr c), (c), -1)
CALL(int, virConnectListAllDomains, (virConnectPtr c, virDomainPtr **d,
    unsigned int flags), (c, d, flags), -1)
CALL(virDomainPtr, virDomainLookupByName, (virConnectPtr c, const char *n),
    (c, n), NULL)
CALL(virDomainPtr, virDomainDefineXML, (virConnectPtr c, const char *xml),
    (c, xml), NULL)
CALL(int, virDomainCreate, (virDomainPtr d), (d), -1)
CALL(int, virDomainDestroy, (virDomainPtr d), (d), -1)
CALL(int, virDomainFree, (virDomainPtr d), (d), -1)
CALL(int, virDomainGetAutostart, (virDomainPtr d, int *a), (d, a), -1)
CALL(int, virDomainSetAutostart, (virDomainPtr d, int a), (d, a), -1)
CALL(const char *, virDomainGetName, (virDomainPtr d), (d), NULL)
CALL(char *, virDomainGetXMLDesc, (virDomainPtr d, unsigned int flags),
    (d, flags), NULL)
CALL(int, virDomainHasManagedSaveImage, (virDomainPtr d, unsigned int flags),
    (d, flags), -1)
CALL(int, virDomainManagedSaveRemove, (virDomainPtr d, unsigned int flags),
    (d, flags), -1)
CALL(int, virDomainIsActive, (virDomainPtr d), (d), -1)
CALL(int, virDomainIsPersistent, (virDomainPtr d), (d), -1)
CALL(int, virDomainShutdown, (virDomainPtr d), (d), -1)
CALL(int, virDomainUndefineFlags, (virDomainPtr d, unsigned int flags),
    (d, flags), -1)
CALL(int, virGetLastErrorCode, (void), (), VIR_ERR_INTERNAL_ERROR)

const char *
virGetLastErrorMessage(void)
{
	static const char *(*f)(void);
	if (f == NULL && (f = (const char *(*)(void))
	    sym("virGetLastErrorMessage")) == NULL)
		return why;
	/* A call that failed here never reached libvirt. */
	return why[0] != '\0' ? why : f();
}

void
virSetErrorFunc(void *arg, virErrorFunc fn)
{
	static void (*f)(void *, virErrorFunc);
	if (f == NULL && (f = (void (*)(void *, virErrorFunc))
	    sym("virSetErrorFunc")) == NULL)
		return;
	f(arg, fn);
}
