use recovery::retryable;

struct Ticket(u32);

#[retryable(max_attempts = 3)]
fn redeem(ticket: Ticket) -> Result<u32, String> { Ok(ticket.0) }

fn main() {}
