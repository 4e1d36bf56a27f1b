// Stigg webhook → Segment track, from the Stigg integration guide.
async function onRequest(request, settings) {
  const body = request.json();

  // filter out events that are not reported on a customer
  if (!body.customer || !body.customer.id) {
    return;
  }

  Segment.track({
    event: body.type.split('.').join('_'),
    userId: body.customer.id,
    properties: body,
  });
}
