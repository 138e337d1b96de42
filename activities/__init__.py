from activities.deal_activities import DealActivities

__all__ = ["DealActivities"]
