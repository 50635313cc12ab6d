/* cflags: -g */
#include "kernel.h"

/*
 * Types whose layout the change alters: a struct gains a member in the middle, an
 * enum gains an enumerator in the middle (the later ones are renumbered). A new
 * enumerator at the end of another enum renumbers nothing.
 */
struct session {
	int id;
	long flags;
};

enum state { IDLE, BUSY, DONE };
enum mode { MODE_A, MODE_B };

struct session *current_session;
enum state current_state;
enum mode current_mode;

int session_id(struct session *s)
{
	return s->id + current_state + current_mode;
}
